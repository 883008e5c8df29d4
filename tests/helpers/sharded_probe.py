"""Run under torchrun by tests/engine/test_sharding.py (and in-process for the single-process
numbers): spectrum top-3, trace and sharpness λ_max / worst-case of the sample transformer in
float64, with the model sharded (FSDP2) under torchrun, written by rank 0 as JSON; at exit each
rank writes (on Linux) the names of the native threads still running after the tool has left its process
group to ``OUT.rank<R>.threads`` (JSON).

    torchrun --nproc-per-node 2 tests/helpers/sharded_probe.py OUT [KEY=VALUE ...]
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import landscape_cli
from helpers.samples import CONFIGS, TRANSFORMER_CKPT
from landscape_cli.engine import distributed


def numbers(overrides: list[str], sharded: bool) -> dict:
    common = {"config": CONFIGS / "char_transformer.yaml", "set": overrides, "dtype": "float64",
              "shard_model": sharded}
    spectrum = landscape_cli.analyze("spectrum", TRANSFORMER_CKPT, top=3, tol=1e-6, **common)
    trace = landscape_cli.analyze("trace", TRANSFORMER_CKPT, max_hvps=40, **common)
    sharpness = landscape_cli.analyze("sharpness", TRANSFORMER_CKPT, measures="lambda_max,worst_case",
                                      steps=6, tol=1e-6, **common)
    return {"top": spectrum.results["top_eigenvalues"], "trace": trace.results["trace"],
            "sharpness": {name: m["value"] for name, m in sharpness.results["measures"].items()},
            "settings": {key: spectrum.settings.get(key)
                         for key in ("world_size", "shard", "hvp_strategy", "n_analysed")},
            "peak": spectrum.cost["peak_memory_bytes"]}


def write_threads_left(path: str) -> None:
    """The process's threads other than the main one, by name (Linux's /proc)."""
    task = Path("/proc/self/task")
    names = sorted((task / tid / "comm").read_text().strip() for tid in os.listdir(task)
                   if int(tid) != os.getpid())
    Path(f"{path}.rank{distributed.rank()}.threads").write_text(json.dumps(names))


if __name__ == "__main__":
    path, *overrides = sys.argv[1:]
    if sys.platform == "linux":
        # registered before the tool's own exit handler, so run after it (atexit runs in reverse)
        atexit.register(write_threads_left, path)
    found = numbers(overrides, sharded=True)
    if distributed.rank() == 0:
        with open(path, "w") as handle:
            json.dump(found, handle)
