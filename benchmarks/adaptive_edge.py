"""The adaptive edge of stability on the sample CNN (issue 29; Cohen et al. 2022, Fig. 1): the
sample BatchNorm CNN trained full-batch with Adam on the 1,797 digits, a checkpoint every few
steps, and a ``landscape batch`` sweep of them: the preconditioned sharpness against 38/η
(``stability_ratio``) beside the plain λ_max.

    python benchmarks/adaptive_edge.py [--lr 0.01] [--steps 400] [--every 25]

Writes .adaptive_edge/ (checkpoints, config, sweep.jsonl, trend.md) and prints a table. The
checkpoints are training-loop dicts ({model, optimizer, step}); the sweep analyses them on the
training objective: the mean squared error against one-hot classes on the whole data set in one
batch, BatchNorm on batch statistics (``bn: train-stats``), as full-batch training saw it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOLDER = HERE / ".adaptive_edge"
sys.path.insert(0, str(ROOT / "sample_checkpoints"))

CONFIG = f"""\
# written by benchmarks/adaptive_edge.py: the sample CNN on its training objective
extends: {ROOT / "configs" / "cnn_bn.yaml"}
data: {{batch_size: 1797}}
bn: train-stats
device: cpu
loss: {{factory: null, fn: {HERE / "adaptive_edge.py"}:one_hot_mse}}
"""


def one_hot_mse(model: nn.Module, batch) -> torch.Tensor:
    """The mean squared error of the logits against one-hot classes (Cohen et al. 2022 train
    with it: cross-entropy's curvature fades as the loss goes to 0)."""
    x, y = batch
    outputs = model(x)
    return nn.functional.mse_loss(outputs, nn.functional.one_hot(y, outputs.shape[1]).to(outputs))


def train(lr: float, steps: int, every: int) -> list[Path]:
    import models

    with np.load(ROOT / "sample_checkpoints" / "data" / "digits.npz") as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    torch.manual_seed(0)
    model = models.make_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    FOLDER.mkdir(exist_ok=True)
    for old in FOLDER.glob("step_*.pt"):
        old.unlink()
    (FOLDER / "landscape.yaml").write_text(CONFIG)
    saved = []
    model.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        one_hot_mse(model, (x, y)).backward()
        optimizer.step()
        if step % every == 0:
            saved.append(FOLDER / f"step_{step:05d}.pt")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                       saved[-1])
    return saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.lr, args.steps, args.every)
    out = FOLDER / "sweep.jsonl"
    subprocess.run(["landscape", "batch", str(FOLDER / "step_*.pt"), "--command", "sharpness",
                    "--measures", "stability_ratio,lambda_max", "-o", str(out), "--no-resume",
                    "--summary", str(FOLDER / "trend.md"), "-q"], check=False)
    print(f"Adam η = {args.lr}, β = (0.9, 0.99), full batch; threshold 38/η = {38 / args.lr:g}")
    print("| step | loss | preconditioned λ_max | stability_ratio | λ_max | λ_max·η/38 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for line in map(json.loads, out.read_text().splitlines()):
        m = line["results"]["measures"]
        threshold = m["stability_threshold"]["value"]
        print(f"| {line['checkpoint']['step']} | {line['results']['loss']:.4g} | "
              f"{m['preconditioned_lambda_max']['value']:.4g} | {m['stability_ratio']['value']:.3f} | "
              f"{m['lambda_max']['value']:.4g} | {m['lambda_max']['value'] / threshold:.4f} |")


if __name__ == "__main__":
    main()
