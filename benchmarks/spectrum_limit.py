"""`spectrum` against its physical limit (issue 32 §1–2).

The sequential limit of a run is one gradient with its graph (the kept graph's first pass) plus
n_HVP products on the kept graph, n_HVP counting every product the run spent (the float32
Lanczos steps and the float64 checks of its residuals). For each model this prints the limit
beside the measured time, and where the rest goes: the graph, the float32 products, the float64
check, the Lanczos arithmetic (reorthogonalisation, the float64 basis, T's eigenvalues: what is
left), and the progress display (Rich's bar on a terminal, against no callback).

It also measures what a block product saves: one batched product of b vectors against b single
products on the kept graph, per vector (``--blocks``), the number block Lanczos lives on.

    python benchmarks/spectrum_limit.py --models mlp cnn_bn char_transformer wide_mlp --top 1 5
"""

from __future__ import annotations

import argparse
import collections
import io
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import build

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.engine.hvp import HVPEngine


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def timed_products():
    """Seconds and vectors spent in ``HVPEngine.hvp``, by the engine's dtype (the float64 ones
    are the residual checks' copy)."""
    seconds, vectors = collections.Counter(), collections.Counter()
    original = HVPEngine.hvp

    def hvp(self, block, **options):
        start = time.perf_counter()
        out = original(self, block, **options)
        key = str(self.dtype).removeprefix("torch.")
        seconds[key] += time.perf_counter() - start
        vectors[key] += 1 if block.dim() == 1 else block.shape[0]
        return out

    HVPEngine.hvp = hvp
    try:
        yield seconds, vectors
    finally:
        HVPEngine.hvp = original


@contextmanager
def terminal_progress():
    """The CLI's progress bar (``cli.common.progress_bar``) drawn on a forced terminal, as a
    user at a terminal sees it, into a buffer."""
    from rich.console import Console

    from landscape_cli.cli import common

    console, kept = Console(file=io.StringIO(), force_terminal=True, width=120), common.stderr
    common.stderr = console
    try:
        with common.progress_bar("Lanczos", None) as update:
            yield lambda step, done, wanted: update(step, f"{done}/{wanted} converged")
    finally:
        common.stderr = kept


def one_run(problem, top: int, tol: float, seed: int, progress: bool) -> dict:
    with timed_products() as (seconds, vectors):
        start = time.perf_counter()
        engine = HVPEngine(problem)
        graph = time.perf_counter() - start
        with terminal_progress() if progress else nullcontext() as callback:
            result = spectrum(engine, top=top, tol=tol, seed=seed, callback=callback)
        wall = time.perf_counter() - start
    dtype = str(problem.dtype).removeprefix("torch.")
    checks = {key: seconds[key] for key in seconds if key != dtype}
    return {"wall": wall, "graph": graph, "steps": result.lanczos_steps,
            "hvps": engine.cost.hvps, "products": seconds[dtype], "checks": sum(checks.values()),
            "check_vectors": sum(vectors[key] for key in checks) or vectors[dtype] - result.lanczos_steps,
            "arithmetic": wall - graph - sum(seconds.values()), "converged": all(result.top_converged)}


def bench(name: str, dtype: str, tops: list[int], tol: float, repeats: int, blocks: list[int]) -> None:
    problem = build(name, dtype=dtype).problem
    graph = median_time(lambda: HVPEngine(problem), repeats)
    gradient = median_time(lambda: HVPEngine(problem, strategy="stream").passes.value_and_grad(), repeats)
    engine = HVPEngine(problem)
    vector = torch.randn(1, problem.n, dtype=problem.dtype)
    product = median_time(lambda: engine.hvp(vector), 2 * repeats + 1)
    print(f"\n## {name} ({problem.n:,} parameters, {problem.n_samples:,} samples, {dtype}, "
          f"{torch.get_num_threads()} threads)")
    print(f"gradient {1e3 * gradient:.1f} ms; gradient with its graph {1e3 * graph:.1f} ms; "
          f"product on the kept graph {1e3 * product:.1f} ms ({product / gradient:.2f}× a gradient)")
    if blocks:
        ratios = []
        for b in blocks:
            block = torch.randn(b, problem.n, dtype=problem.dtype)
            seconds = median_time(lambda block=block: engine.hvp(block), repeats)
            ratios.append(f"b={b}: {seconds / (b * product):.2f}")
        print("batched product per vector ÷ one product: " + ", ".join(ratios))
    print(f"| top | seed | wall | limit | ratio | HVPs (steps + checks) | graph | {dtype} products "
          "| float64 check | arithmetic | with the progress bar |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for top in tops:
        for seed in range(repeats):
            run = one_run(problem, top, tol, seed, progress=False)
            shown = one_run(problem, top, tol, seed, progress=True)
            limit = graph + run["hvps"] * product
            print(f"| {top} | {seed} | {run['wall']:.3f} s | {limit:.3f} s | {run['wall'] / limit:.2f}× "
                  f"| {run['hvps']} ({run['steps']} + {run['hvps'] - run['steps']}) "
                  f"| {run['graph']:.3f} | {run['products']:.3f} | {run['checks']:.3f} "
                  f"| {run['arithmetic']:.3f} | {shown['wall']:.3f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn_bn", "char_transformer", "wide_mlp"])
    parser.add_argument("--top", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", nargs="*", type=int, default=[2, 5, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        bench(name, args.dtype, args.top, args.tol, args.repeats, args.blocks)


if __name__ == "__main__":
    main()
