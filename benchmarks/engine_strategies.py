"""How the HVP engine's strategies compare, in units of one gradient, on the shipped samples.

    python benchmarks/engine_strategies.py [--device cpu|cuda] [--dtype float32|float64]

Prints a Markdown table: time of one full-dataset gradient, then the time per vector of
H·V for blocks of k = 1, 8 and 32 vectors with the ``cached`` and ``stream`` strategies (and
``compile``: stream through ``torch.compile``) (median of several repeats, after a warm-up),
the ratio to the gradient, and the warm-up call itself: for ``compile`` that is where the
compilation of each new block shape goes (on the CPU, 13 s to 2 min per shape).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from cases import CASES, SAMPLES, build

from landscape_cli.engine.hvp import HVPEngine


def median_time(fn, repeats: int, sync) -> tuple[float, float]:
    """(seconds of the first, warm-up call; median seconds of ``repeats`` calls after it)."""
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(SAMPLES), choices=CASES)
    parser.add_argument("--strategies", nargs="+", default=["cached", "stream"],
                        choices=["cached", "stream", "compile"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 8, 32])
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"device {args.device}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | params | samples | gradient | strategy | k | per vector | × gradient | first call |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models:
        problem = build(name, args.device, args.dtype).problem
        _, t_grad = median_time(lambda p=problem: HVPEngine(p, strategy="stream").grad(),
                                args.repeats, sync)
        for strategy in args.strategies:
            engine = (HVPEngine(problem, compile=True) if strategy == "compile"
                      else HVPEngine(problem, strategy=strategy))
            for k in args.blocks:
                vectors = torch.randn(k, problem.n, device=problem.device, dtype=problem.dtype)
                first, t = median_time(lambda e=engine, v=vectors: e.hvp(v), args.repeats, sync)
                t /= k
                print(f"| {name} | {problem.n} | {problem.n_samples} | {t_grad * 1e3:.1f} ms | "
                      f"{strategy} | {k} | {t * 1e3:.2f} ms | {t / t_grad:.2f} | {first:.2f} s |",
                      flush=True)


if __name__ == "__main__":
    main()
