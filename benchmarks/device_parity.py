"""CUDA engine = CPU engine: top eigenvalues of every sample in float64 on both devices.

    python benchmarks/device_parity.py            # needs a CUDA device

Prints, per sample, the top-5 eigenvalues on the CPU and on CUDA, their largest relative
difference, and the time of each run.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.config import load_config
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.loading.assemble import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {
    "mlp": ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt",
    "cnn_bn": ROOT / "sample_checkpoints/cnn_bn/final.pt",
    "char_transformer": ROOT / "sample_checkpoints/char_transformer/final.pt",
}


def top5(name: str, device: str) -> tuple[list[float], float, str]:
    config = load_config(ROOT / "configs" / f"{name}.yaml", [f"device={device}", "dtype=float64"])
    problem = load(config, SAMPLES[name]).problem
    start = time.perf_counter()
    engine = HVPEngine(problem)
    result = spectrum(engine.hvp, problem.n, top=5, tol=1e-8, seed=0, dtype=problem.dtype,
                      device=problem.device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result.top_eigenvalues, time.perf_counter() - start, engine.mode


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}\n")
    print("| sample | CPU top-5 (float64) | max rel. diff CUDA vs CPU | CPU s | CUDA s |")
    print("|---|---|---:|---:|---:|")
    for name in SAMPLES:
        cpu, t_cpu, _ = top5(name, "cpu")
        gpu, t_gpu, _ = top5(name, "cuda")
        diff = max(abs(a - b) / abs(a) for a, b in zip(cpu, gpu))
        print(f"| {name} | {', '.join(f'{v:.8g}' for v in cpu)} | {diff:.1e} | {t_cpu:.2f} | "
              f"{t_gpu:.2f} |", flush=True)


if __name__ == "__main__":
    main()
