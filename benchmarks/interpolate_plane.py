"""A 51×51 filter-normalised plane around the sample MLP (issue 20's target: at least 5× faster
than the ``loss-landscapes`` package, equal losses to 1e-5), the same model, data and
directions for both.

loss-landscapes (3.0.6) walks its grid with in-place steps and one full-data forward pass per
point (``planar_interpolation``). Its grid is start + i·d1 + (j + 1)·d2 on even columns i, and
start + i·d1 + j·d2 on odd ones (the serpentine walk loses a step); the losses are compared on
the even columns, where the two grids are the same points. Both are given the directions
``landscape`` drew (``random_plane``, filter normalisation, biases and norms zeroed), the
whole dataset in one batch for loss-landscapes (its ``Loss`` metric), ``landscape``'s own
batches for it, float64 so that the comparison is exact up to summation order.

    pip install --no-deps loss-landscapes==3.0.6
    python benchmarks/interpolate_plane.py [--steps 51] [--runs 3]
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
CHECKPOINT = ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt"
CONFIG = ROOT / "configs/mlp.yaml"


def ours(steps: int) -> tuple[float, torch.Tensor]:
    report = landscape_cli.analyze("interpolate", [CHECKPOINT], config=CONFIG, plane=True,
                                   grid=f"-1:1:{steps}", dtype="float64",
                                   save_directions=ROOT / "benchmarks/.plane.safetensors")
    return report.cost["wall_s"], torch.tensor(report.results["plane"]["loss"], dtype=torch.float64)


def theirs(steps: int) -> tuple[float, torch.Tensor]:
    import numpy as np
    from loss_landscapes import planar_interpolation
    from loss_landscapes.metrics import Loss

    from landscape_cli.analyses.plane_file import load_plane
    from landscape_cli.config import load_config
    from landscape_cli.session import Session

    loaded = Session(load_config(CONFIG, ["dtype=float64", "device=cpu"])).load(CHECKPOINT)
    problem = loaded.problem
    plane = load_plane(ROOT / "benchmarks/.plane.safetensors", problem.names, problem.shapes)
    model = copy.deepcopy(problem.objective.model)
    d1, d2 = 2 * plane.u / (steps - 1), 2 * plane.v / (steps - 1)
    start = plane.origin - plane.u - plane.v - d2  # even columns then visit origin − u − v + i·d1 + j·d2

    def at(theta: torch.Tensor) -> torch.nn.Module:
        copy_ = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(theta, copy_.parameters())
        return copy_

    data = np.load(ROOT / "sample_checkpoints/data/digits.npz")
    x, y = torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"]).long()
    metric = Loss(torch.nn.CrossEntropyLoss(), x, y)
    began = time.perf_counter()
    grid = planar_interpolation(at(start), at(start + steps * d1), at(start + steps * d2), metric,
                                steps=steps)
    return time.perf_counter() - began, torch.tensor(grid, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=51)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    mine, other = [], []
    for _ in range(args.runs):
        seconds, grid = ours(args.steps)
        mine.append(seconds)
        seconds, their_grid = theirs(args.steps)
        other.append(seconds)
    # theirs[i][j]: column i along u (x), row j along v (y); ours[j][i]: row y, column x
    even = their_grid[0::2]
    difference = float((even - grid.T[0::2]).abs().max())
    print(f"landscape: {statistics.median(mine):.2f} s, loss-landscapes: {statistics.median(other):.2f} s, "
          f"ratio {statistics.median(other) / statistics.median(mine):.1f}× (target ≥ 5×); "
          f"max |Δloss| on the shared points {difference:.2e} (target ≤ 1e-5)")


if __name__ == "__main__":
    main()
