"""Run under torchrun by tests/engine/test_distributed.py (and in-process for the single-process
numbers): the numbers the issue lists, from every command, written by rank 0 as JSON.

    torchrun --nproc-per-node 2 tests/helpers/distributed_probe.py CKPT CKPT2 CONFIG OUT [KEY=VALUE ...]
"""

from __future__ import annotations

import json
import sys

import landscape_cli
from landscape_cli.engine import distributed


def numbers(checkpoint: str, other: str, config: str, overrides: list[str]) -> dict:
    common = {"config": config, "set": overrides, "dtype": "float64"}
    out = {"top": landscape_cli.analyze("spectrum", checkpoint, top=3, **common).results["top_eigenvalues"]}
    out["trace"] = landscape_cli.analyze("trace", checkpoint, max_hvps=40, **common).results["trace"]
    measures = landscape_cli.analyze("sharpness", checkpoint, measures="average_case,worst_case",
                                     samples=8, steps=4, **common).results["measures"]
    out["sharpness"] = {name: m["value"] for name, m in measures.items()}
    line = landscape_cli.analyze("interpolate", [checkpoint, other], alphas="0:1:5", **common)
    out["line"] = [p["loss"] for p in line.results["points"]]
    recalibrated = landscape_cli.analyze("interpolate", [checkpoint, other], alphas="0:1:3",
                                         recalibrate_bn=True, **common)
    out["recalibrated"] = [p["loss"] for p in recalibrated.results["points"]]
    out["world_size"] = line.settings["world_size"]
    return out


if __name__ == "__main__":
    checkpoint, other, config, path, *overrides = sys.argv[1:]
    found = numbers(checkpoint, other, config, overrides)
    if distributed.rank() == 0:
        with open(path, "w") as handle:
            json.dump(found, handle)
