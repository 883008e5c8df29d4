"""``landscape batch`` against a shell loop of ``landscape spectrum`` (issue 21's target: 50
checkpoints of the sample MLP with ``--command spectrum --top 1`` at least 3× faster, and a
per-checkpoint overhead under 20% of its analysis time).

The checkpoints are the sample MLP's six, copied with small seeded perturbations to 50
distinct files. Overhead per checkpoint: its line's ``cost.total_s`` − ``cost.wall_s`` (config,
checkpoint read, weights swapped in and checked, report), against the mean ``cost.wall_s``;
the process's start (importing torch, building the model and data once) is shown apart.

    python benchmarks/batch.py [--count 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_checkpoints/mlp").glob("*.pt"))
CONFIG = ROOT / "configs/mlp.yaml"


def checkpoints(folder: Path, count: int) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        state = torch.load(SAMPLES[i % len(SAMPLES)])
        state = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        paths.append(folder / f"ckpt{i}.pt")
        torch.save(state, paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = checkpoints(folder, args.count)
        began = time.perf_counter()
        for path in paths:
            subprocess.run(["landscape", "spectrum", str(path), "-c", str(CONFIG), "--top", "1",
                            "--json", "-q"], check=True, stdout=subprocess.DEVNULL)
        loop = time.perf_counter() - began
        out = folder / "out.jsonl"
        began = time.perf_counter()
        subprocess.run(["landscape", "batch", str(folder / "*.pt"), "--command", "spectrum", "-c",
                        str(CONFIG), "--top", "1", "-o", str(out), "-q"], check=True)
        sweep = time.perf_counter() - began
        costs = [json.loads(line)["cost"] for line in out.read_text().splitlines()]
    walls = [c["wall_s"] for c in costs]
    overhead = sum(c["total_s"] - c["wall_s"] for c in costs) / len(costs)
    mean = sum(walls) / len(walls)
    start = sweep - sum(c["total_s"] for c in costs)
    print(f"shell loop: {loop:.1f} s; batch: {sweep:.1f} s; speed-up {loop / sweep:.1f}× (target ≥ 3×)")
    print(f"per checkpoint: analysis {mean * 1000:.0f} ms, overhead {overhead * 1000:.0f} ms "
          f"= {overhead / mean:.0%} of the analysis (target < 20%); the process's start and "
          f"the first build: {start:.1f} s once")


if __name__ == "__main__":
    main()
