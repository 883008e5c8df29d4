"""CUDA engine = CPU engine: every sample's numbers in float64 on both devices.

    python benchmarks/device_parity.py [SAMPLE ...]   # needs a CUDA device

Prints, per sample, the top-5 eigenvalues, the Hutch++ trace and the SLQ negative-weight
ratio on the CPU and on CUDA (same seed, so the same random vectors), their largest relative
difference, and the time of each.
"""

from __future__ import annotations

import sys
import time

import torch
from cases import SAMPLES, build

from landscape_cli.analyses.density import spectral_density
from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.analyses.trace import trace
from landscape_cli.engine.hvp import HVPEngine


def measure(name: str, device: str) -> tuple[list[float], float]:
    """Top-5 eigenvalues, trace and negative-weight ratio; and the seconds they took."""
    problem = build(name, device, "float64").problem
    start = time.perf_counter()
    engine = HVPEngine(problem)
    top = spectrum(engine, top=5, tol=1e-8, seed=0).top_eigenvalues
    total = trace(engine, rtol=0.01, max_hvps=600, seed=0).estimate.trace
    ratio = spectral_density(engine, runs=4, steps=40, seed=0).negative_weight_ratio
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return [*top, total, ratio], time.perf_counter() - start


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}\n")
    print("| sample | CPU top-5 (float64) | trace | neg. weight ratio | max rel. diff CUDA vs CPU "
          "| CPU s | CUDA s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in sys.argv[1:] or SAMPLES:
        cpu, t_cpu = measure(name, "cpu")
        gpu, t_gpu = measure(name, "cuda")
        diff = max(abs(a - b) / max(abs(a), 1e-300) if a != b else 0.0 for a, b in zip(cpu, gpu))
        print(f"| {name} | {', '.join(f'{v:.8g}' for v in cpu[:5])} | {cpu[5]:.8g} | {cpu[6]:.5g} "
              f"| {diff:.1e} | {t_cpu:.2f} | {t_gpu:.2f} |", flush=True)


if __name__ == "__main__":
    main()
