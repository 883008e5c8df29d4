"""A report (or a batch line) as one row of flat named values: where it came from, its place in
training, every scalar result and each sharpness measure's value and error. What a DataFrame
(``integrations/dataframes.py``) and a tracker (``integrations/loggers.py``) take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError
from landscape_cli.sweep.trend import step_of

#: a list of at most this many numbers becomes one column per entry (``top_eigenvalues.0``, ...);
#: a longer one (a density's grid, a curve) is left to the report
MAX_LISTED = 16
#: the errors and settings a sharpness measure carries beside its value
MEASURE_FIELDS = ("stderr", "residual", "converged", "threshold", "fd_error")


def _flat(prefix: str, value: Any, row: dict[str, Any]) -> None:
    """Numbers, strings and booleans under their dotted names; short lists of numbers one
    column an entry."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else key, inner, row)
    elif isinstance(value, list):
        if len(value) <= MAX_LISTED and all(isinstance(v, (int, float)) or v is None for v in value):
            for i, v in enumerate(value):
                row[f"{prefix}.{i}"] = v
    elif value is None or isinstance(value, (int, float, str, bool)):
        row[prefix] = value


def row_of(doc: dict[str, Any], source: Path) -> dict[str, Any]:
    """One report's row: where it came from, its place in training, every scalar result, and
    each sharpness measure's value (column NAME) and error (NAME.stderr, NAME.ci95.0, ...)."""
    checkpoint = doc.get("checkpoint") or {}
    row: dict[str, Any] = {"source": str(source), "command": doc.get("command"),
                           "status": doc.get("status"), "checkpoint": checkpoint.get("path"),
                           "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
                           "step": step_of(doc), "error": doc.get("error")}
    results = dict(doc.get("results") or {})
    for name, measure in (results.pop("measures", None) or {}).items():
        row[name] = measure.get("value")
        for key in MEASURE_FIELDS:
            if key in measure:
                row[f"{name}.{key}"] = measure[key]
        if measure.get("ci95") is not None:
            row[f"{name}.ci95.0"], row[f"{name}.ci95.1"] = measure["ci95"]
    _flat("", results, row)
    _flat("cost", doc.get("cost") or {}, row)
    return row


def read_documents(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The reports a file holds, and whether it is a batch file: one JSON document (``--json``),
    or one report a line (``batch``, ``--format jsonl``); anything else is a one-line error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LandscapeError(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return [whole], False
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise LandscapeError(f"{path}:{number}: not a JSON report or batch line") from None
        if not isinstance(doc, dict) or "command" not in doc:
            raise LandscapeError(f"{path}:{number}: not a landscape report")
        docs.append(doc)
    if not docs:
        raise LandscapeError(f"{path}: holds no report")
    return docs, True
