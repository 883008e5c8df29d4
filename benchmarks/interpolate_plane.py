"""A 51×51 filter-normalised plane around a sample (the MLP or the BatchNorm CNN) against the
``loss-landscapes`` package and against the forward-pass floor (issue 32 §4: ≥ 90% of the floor,
≥ 2× loss-landscapes), the same model, data and directions for both.

The floor is P forward passes over the dataset at the model's best batch throughput: the
fastest of no-grad forward passes (model and loss) in batches of 64 to all samples at once.

loss-landscapes (3.0.6) walks its grid with in-place steps and one full-data forward pass per
point (``planar_interpolation``). Its grid is start + i·d1 + (j + 1)·d2 on even columns i, and
start + i·d1 + j·d2 on odd ones (the serpentine walk loses a step); the losses are compared on
the even columns, where the two grids are the same points. Both are given the directions
``landscape`` drew (``random_plane``, filter normalisation, biases and norms zeroed), the
whole dataset in one batch for loss-landscapes (its ``Loss`` metric), ``landscape``'s own
batches for it, float64 so that the comparison is exact up to summation order.

    pip install --no-deps loss-landscapes==3.0.6
    python benchmarks/interpolate_plane.py [--models mlp cnn_bn] [--dtype float64] [--steps 51] [--runs 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

import landscape_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"mlp": ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt",
           "cnn_bn": ROOT / "sample_checkpoints/cnn_bn/final.pt"}
BATCHES = (64, 128, 256, 512, 1024, None)  # None: the whole dataset at once


def ours(name: str, steps: int, dtype: str) -> tuple[float, torch.Tensor]:
    report = landscape_cli.analyze("interpolate", [SAMPLES[name]], config=ROOT / f"configs/{name}.yaml",
                                   plane=True, grid=f"-1:1:{steps}", dtype=dtype,
                                   save_directions=ROOT / "benchmarks/.plane.safetensors")
    return report.cost["wall_s"], torch.tensor(report.results["plane"]["loss"], dtype=torch.float64)


def loaded(name: str, dtype: str):
    from landscape_cli.config import load_config
    from landscape_cli.session import Session

    config = load_config(ROOT / f"configs/{name}.yaml", [f"dtype={dtype}", "device=cpu"])
    return Session(config).load(SAMPLES[name])


def digits(dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    data = np.load(ROOT / "sample_checkpoints/data/digits.npz")
    return torch.from_numpy(data["x"]).to(getattr(torch, dtype)), torch.from_numpy(data["y"]).long()


def floor(name: str, dtype: str, points: int) -> tuple[float, int]:
    """P forward passes over the dataset at the best batch size (seconds, that size)."""
    model = copy.deepcopy(loaded(name, dtype).problem.objective.model).eval()
    x, y = digits(dtype)
    best = None
    with torch.no_grad():
        for size in BATCHES:
            size = size or len(x)

            def one_pass(size: int = size) -> None:
                for i in range(0, len(x), size):
                    torch.nn.functional.cross_entropy(model(x[i:i + size]), y[i:i + size])

            one_pass()
            seconds = statistics.median(_timed(one_pass) for _ in range(7))
            if best is None or seconds < best[0]:
                best = (seconds, size)
    return points * best[0], best[1]


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def theirs(name: str, steps: int, dtype: str) -> tuple[float, torch.Tensor]:
    from loss_landscapes import planar_interpolation
    from loss_landscapes.metrics import Loss

    from landscape_cli.analyses.plane_file import load_plane

    problem = loaded(name, dtype).problem
    plane = load_plane(ROOT / "benchmarks/.plane.safetensors", problem.names, problem.shapes,
                       dtype=problem.dtype)
    model = copy.deepcopy(problem.objective.model).eval()
    d1, d2 = 2 * plane.u / (steps - 1), 2 * plane.v / (steps - 1)
    start = plane.origin - plane.u - plane.v - d2  # even columns then visit origin − u − v + i·d1 + j·d2

    def at(theta: torch.Tensor) -> torch.nn.Module:
        copy_ = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(theta, copy_.parameters())
        return copy_

    metric = Loss(torch.nn.CrossEntropyLoss(), *digits(dtype))
    began = time.perf_counter()
    grid = planar_interpolation(at(start), at(start + steps * d1), at(start + steps * d2), metric,
                                steps=steps)
    return time.perf_counter() - began, torch.tensor(grid, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(SAMPLES))
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--steps", type=int, default=51)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for name in args.models:
        mine, other = [], []
        for _ in range(args.runs):
            seconds, grid = ours(name, args.steps, args.dtype)
            mine.append(seconds)
            seconds, their_grid = theirs(name, args.steps, args.dtype)
            other.append(seconds)
        limit, size = floor(name, args.dtype, args.steps ** 2)
        # theirs[i][j]: column i along u (x), row j along v (y); ours[j][i]: row y, column x
        difference = float((their_grid[0::2] - grid.T[0::2]).abs().max())
        ours_s, theirs_s = statistics.median(mine), statistics.median(other)
        print(f"{name} ({args.dtype}, {args.steps}×{args.steps}, {torch.get_num_threads()} threads): "
              f"landscape {ours_s:.2f} s, loss-landscapes {theirs_s:.2f} s, ratio "
              f"{theirs_s / ours_s:.2f}× (target ≥ 2×); floor {limit:.2f} s (batches of {size}), "
              f"{100 * limit / ours_s:.0f}% of it (target ≥ 90%); max |Δloss| on the shared points "
              f"{difference:.2e}", flush=True)


if __name__ == "__main__":
    main()
