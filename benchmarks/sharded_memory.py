"""Per-rank peak memory of a sharded model (issue 28): a 25M-parameter character transformer
(the sample's architecture, width 512, 8 layers), ``spectrum --top 1 --max-hvps 20`` in one
process against 2 ranks with ``--shard-model`` (FSDP2, gloo, CPU), and the top eigenvalue of
both.

    python benchmarks/sharded_memory.py          # writes .sharded_memory/, prints a table

Each run is a fresh process; its peak is the report's ``cost.peak_memory_bytes`` (the run's own
VmHWM; under torchrun rank 0's, with ``peak_memory_bytes_max_over_ranks``). Both runs use fd
products (the sharded ones can use no other), float32, the default memory budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOLDER = HERE / ".sharded_memory"
sys.path.insert(0, str(ROOT / "sample_checkpoints"))

CONFIG = f"""\
# written by benchmarks/sharded_memory.py: the sample character transformer at width 512
model:
  factory: {ROOT}/sample_checkpoints/models.py:make_char_transformer
  kwargs: {{vocab_size: 52, d_model: 512, n_heads: 8, n_layers: 8, context: 32}}
data:
  factory: {ROOT}/sample_checkpoints/models.py:char_windows
  kwargs: {{path: data/corpus.txt, context: 32, stride: 16}}
  batch_size: 32
  max_samples: 64
loss:
  fn: {ROOT}/sample_checkpoints/models.py:lm_loss
device: cpu
dtype: float32
"""

ARGS = ["spectrum", str(FOLDER / "model.pt"), "-c", str(FOLDER / "landscape.yaml"), "--top", "1",
        "--max-hvps", "20", "--hvp-strategy", "fd", "--json"]


def build() -> int:
    import models

    torch.manual_seed(0)
    model = models.make_char_transformer(52, 512, 8, 8, 32)
    FOLDER.mkdir(exist_ok=True)
    torch.save(model.state_dict(), FOLDER / "model.pt")
    (FOLDER / "landscape.yaml").write_text(CONFIG)
    return sum(p.numel() for p in model.parameters())


def run(command: list[str], out: Path) -> tuple[dict, float]:
    """The report ``command`` writes to ``out`` (``-o``), and its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([*command, "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return json.loads(out.read_text()), time.perf_counter() - start


def main() -> None:
    n = build()
    landscape = str(Path(sys.executable).with_name("landscape"))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    alone, alone_s = run([landscape, *ARGS], FOLDER / "alone.json")
    sharded, sharded_s = run([torchrun, "--nproc-per-node", "2", "-m", "landscape_cli", *ARGS,
                              "--shard-model"], FOLDER / "sharded.json")
    gib = 2**30
    one = alone["cost"]["peak_memory_bytes"]
    rank0 = sharded["cost"]["peak_memory_bytes"]
    worst = sharded["cost"]["peak_memory_bytes_max_over_ranks"]
    print(f"{n:,} parameters, torch {torch.__version__}")
    print("| run | wall s | peak GiB (rank 0) | peak GiB (max over ranks) | λ₁ ± residual |")
    print("|---|---:|---:|---:|---|")
    for name, report, wall, peak, top in (
            ("1 process", alone, alone_s, one, one),
            ("2 ranks, --shard-model", sharded, sharded_s, rank0, worst)):
        r = report["results"]
        print(f"| {name} | {wall:.1f} | {peak / gib:.2f} | {top / gib:.2f} | "
              f"{r['top_eigenvalues'][0]:.6f} ± {r['top_residuals'][0]:.2g} |")
    print(f"per-rank peak ÷ single process: {worst / one:.2f} (target ≤ 0.6)")


if __name__ == "__main__":
    main()
