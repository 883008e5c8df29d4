"""The one JSON document every command emits per checkpoint (schema_version "1")."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from landscape_cli import __version__

SCHEMA_VERSION = "1"


def sanitize(value: Any, path: str, warnings: list[str]) -> Any:
    """Replace NaN/Inf by None (JSON has no such tokens), noting where in ``warnings``."""
    if isinstance(value, float) and not math.isfinite(value):
        warnings.append(f"{path} is {value}; reported as null")
        return None
    if isinstance(value, dict):
        return {k: sanitize(v, f"{path}.{k}", warnings) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v, f"{path}[{i}]", warnings) for i, v in enumerate(value)]
    return value


def tool_info() -> dict[str, str]:
    return {"name": "landscape", "version": __version__, "torch": torch.__version__}


def build_report(command: str, *, checkpoint: dict[str, Any], settings: dict[str, Any],
                 results: dict[str, Any], cost: dict[str, Any], gates: list[dict[str, Any]],
                 warnings: list[str], status: str = "ok") -> dict[str, Any]:
    notes = list(warnings)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "status": status,
        "tool": tool_info(),
        "checkpoint": checkpoint,
        "settings": settings,
        "results": sanitize(results, "results", notes),
        "cost": cost,
        "gates": sanitize(gates, "gates", notes),
    }
    doc["warnings"] = notes
    return doc



@dataclass(frozen=True)
class Report:
    """The report as an object: its fields are the document's keys (``to_dict`` and
    ``to_json`` give exactly what ``--json`` prints), and ``result`` is the analysis's typed
    result (its numbers unrounded, NaN where the JSON says null), for notebooks."""

    schema_version: str
    command: str
    status: str
    tool: dict[str, str]
    checkpoint: dict[str, Any]
    settings: dict[str, Any]
    results: dict[str, Any]
    cost: dict[str, Any]
    gates: list[dict[str, Any]]
    warnings: list[str]
    result: Any = None

    @classmethod
    def of(cls, doc: dict[str, Any], result: Any = None) -> Report:
        return cls(**doc, result=result)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
