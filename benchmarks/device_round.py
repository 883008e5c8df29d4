"""Issue 32 §5 on a lent GPU, prepared to run in one call (``device_round.sh`` runs it all):

    python benchmarks/device_round.py resnet [--model resnet18] [--device cuda] [--top 1] [--tol 1e-3]
    python benchmarks/device_round.py trace [--device cuda]

``resnet``: on ResNet-18 over its 10,000 32×32 images (``cases.py``), float32: one gradient and
one product (the median of 3 after a warm-up), blocks of b = 5 and 8 products per vector (the
block-Lanczos rule's ratio, §2; one call each, warm), the product ÷ the gradient (target ≤ 2×),
then ``spectrum
--top 1 --tol 1e-3`` from a fresh engine (target < 10 s), its HVPs and the peak device memory.
``trace``: the transformer sample's ``trace`` (the CLI's defaults, device from ``--device``),
its wall time, HVPs and peak memory. Both print Markdown rows for ``benchmarks/README.md``,
with the card's name.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from cases import SAMPLES, build

import landscape_cli
from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.engine.hvp import HVPEngine


def _synchronized(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3,
                   warm_up: bool = True) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls (after one more, ``warm_up``), the
    device synchronised around each."""
    sync = _synchronized(device)
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def card(device: torch.device) -> str:
    if device.type != "cuda":
        return f"CPU ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name(device)


def peak_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "—"
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"


def per_vector_seconds(problem) -> tuple[str, dict[int, float]]:
    """The engine's mode and the seconds per vector of a product of b = 1, 5 and 8 vectors (its
    kept graph, if any, freed on return)."""
    engine = HVPEngine(problem)
    generator = torch.Generator().manual_seed(0)
    blocks = {b: torch.randn(b, problem.n, generator=generator).to(problem.device) for b in (1, 5, 8)}
    return engine.mode, {b: median_seconds(lambda v=v: engine.hvp(v), problem.device,
                                           repeats=3 if b == 1 else 1, warm_up=b == 1) / b
                         for b, v in blocks.items()}


def resnet(model: str, device_name: str, top: int, tol: float) -> None:
    case = build(model, device_name, "float32")
    problem = case.problem
    device = problem.device
    print(f"{model}: {problem.n:,} parameters, {problem.n_samples:,} samples, {card(device)}, "
          f"torch {torch.__version__}", flush=True)
    gradient = median_seconds(lambda: HVPEngine(problem, strategy="stream").grad(), device)
    mode, per_vector = per_vector_seconds(problem)
    print(f"| {model} | gradient {gradient:.3f} s | product {per_vector[1]:.3f} s "
          f"({per_vector[1] / gradient:.2f}× the gradient, engine {mode}) | "
          f"block of 5: {per_vector[5] / per_vector[1]:.2f}, of 8: {per_vector[8] / per_vector[1]:.2f} "
          "of a product per vector |", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = _synchronized(device)
    sync()
    start = time.perf_counter()
    fresh = HVPEngine(problem)
    result = spectrum(fresh, top=top, tol=tol, seed=0)
    sync()
    seconds = time.perf_counter() - start
    print(f"| {model} top-{top} at tol {tol:g} | {seconds:.2f} s | {fresh.cost.hvps} HVPs | "
          f"λ = {', '.join(f'{v:.6g}' for v in result.top_eigenvalues)} | peak {peak_mib(device)} |",
          flush=True)


def trace(device_name: str) -> None:
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    checkpoint = SAMPLES["char_transformer"]
    report = landscape_cli.analyze("trace", checkpoint, config=checkpoint.parent / "landscape.yaml",
                                   set=[f"device={device_name}"])
    cost = report.cost
    print(f"| transformer sample trace | {cost['wall_s']:.2f} s | {cost['hvps']} HVPs | "
          f"tr = {report.results['trace']:.6g} ± {report.results['stderr']:.2g} | "
          f"{card(device)} | peak {peak_mib(device)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["resnet", "trace"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--top", type=int, default=1)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()
    if args.what == "resnet":
        resnet(args.model, args.device, args.top, args.tol)
    else:
        trace(args.device)


if __name__ == "__main__":
    main()
