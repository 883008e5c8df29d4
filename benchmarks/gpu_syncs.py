"""Host-device synchronisations per Lanczos step on CUDA (DESIGN §4: one, the convergence check).

    python benchmarks/gpu_syncs.py [--model cnn_bn] [--strategy auto]

Runs ``spectrum`` (top-5) under ``torch.cuda.set_sync_debug_mode("warn")`` and counts the
synchronising calls torch reports, against the Lanczos steps taken.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from cases import CASES, build

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.engine.hvp import HVPEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_bn", choices=CASES)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    problem = build(args.model, "cuda").problem
    engine = HVPEngine(problem, strategy=args.strategy)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        result = spectrum(engine, top=5, tol=1e-4, seed=0)
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where: dict[str, int] = {}
    for w in syncs:
        place = f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}"
        where[place] = where.get(place, 0) + 1
    print(f"{args.model} (engine {engine.mode}): {result.lanczos_steps} Lanczos steps, "
          f"{engine.cost.hvps} HVPs, {len(syncs)} synchronisations "
          f"({len(syncs) / result.lanczos_steps:.2f} per step); by place: {where}")


if __name__ == "__main__":
    main()
