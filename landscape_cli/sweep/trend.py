"""A sweep's trend: the main number of each checkpoint's line, in training order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from landscape_cli.paths import natural
from landscape_cli.results.sharpness import EDGES

#: the number a sweep's trend follows, by command (sharpness: its first measure)
MAIN = {"spectrum": "lambda_max", "trace": "trace", "classify-critical-point": "lambda_min"}
#: metadata keys that order checkpoints in training, most precise first
STEP_KEYS = ("global_step", "step", "epoch")


def main_metric(line: dict[str, Any]) -> tuple[str, float | None]:
    """The number a line's trend follows, and its name (sharpness: stability_ratio where it was
    measured, else the first measure)."""
    results = line.get("results") or {}
    if line.get("command") == "sharpness":
        measures = results.get("measures") or {}
        name = "stability_ratio" if "stability_ratio" in measures else next(iter(measures), "lambda_max")
        return name, (measures.get(name) or {}).get("value")
    name = MAIN.get(line.get("command", ""), "loss")
    value = results.get(name)
    if value is None and name == "lambda_max":
        value = (results.get("top_eigenvalues") or [None])[0]
    return name, value


def step_of(line: dict[str, Any]) -> float | None:
    """A checkpoint's place in training: its metadata's global_step / step / epoch, else the
    last number in its path."""
    checkpoint = line.get("checkpoint") or {}
    for key in STEP_KEYS:
        if isinstance(checkpoint.get(key), (int, float)):
            return float(checkpoint[key])
    numbers = re.findall(r"\d+", Path(checkpoint.get("path", "")).name)
    return float(numbers[-1]) if numbers else None


def in_training_order(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines by step (those without one last), then by path in natural order."""
    def key(line: dict[str, Any]) -> tuple:
        step = step_of(line)
        return step is None, step or 0, natural((line.get("checkpoint") or {}).get("path") or "")

    return sorted(lines, key=key)


def trend(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per checkpoint, in training order: path, step, status, the main number, the
    gates it failed."""
    rows = []
    for line in in_training_order(lines):
        name, value = main_metric(line) if line.get("status") == "ok" else (None, None)
        rows.append({"checkpoint": line.get("checkpoint", {}).get("path"), "step": step_of(line),
                     "status": line.get("status"), "metric": name, "value": value,
                     "failed": [g["expr"] for g in line.get("gates", []) if g.get("violated")],
                     "error": line.get("error")})
    return rows


def metric_of(rows: list[dict[str, Any]], command: str) -> str:
    """The name of the number the trend of ``rows`` follows (the command's, when no row has one)."""
    return next((r["metric"] for r in rows if r["metric"]), MAIN.get(command, "value"))


def first_at_edge(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row (in training order) whose number reaches its edge of stability (``EDGES``),
    None where none does or the number has no edge."""
    return next((r for r in rows if r["metric"] in EDGES and r["value"] is not None
                 and r["value"] >= EDGES[r["metric"]]), None)
