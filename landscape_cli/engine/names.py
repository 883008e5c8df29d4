"""The engine's names, declared once and torch-free (the CLI's ``--help`` reads them)."""

from __future__ import annotations

from typing import Literal

AUTO, CACHED, STREAM = "auto", "cached", "stream"
#: ``engine.strategy`` / ``--hvp-strategy``: keep the first-order graph, stream the data, or
#: keep it where it fits the memory budget (``engine/plan.py``)
STRATEGIES = (AUTO, CACHED, STREAM)
Strategy = Literal[STRATEGIES]
#: ``precision`` / ``--precision`` (Lightning's names): how the passes run, with the dtype each
#: holds the weights in (``dtype``); the mixed ones run the forward and backward passes under
#: autocast over float32 weights (``engine/problem.py``)
PRECISIONS = {"32": "float32", "64": "float64", "bf16-mixed": "float32", "16-mixed": "float32"}
Precision = Literal[tuple(PRECISIONS)]
