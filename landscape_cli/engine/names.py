"""The engine's names, declared once and torch-free (the CLI's ``--help`` reads them)."""

from __future__ import annotations

from typing import Literal

AUTO, CACHED, STREAM = "auto", "cached", "stream"
#: ``engine.strategy`` / ``--hvp-strategy``: keep the first-order graph, stream the data, or
#: keep it where it fits the memory budget (``engine/plan.py``)
STRATEGIES = (AUTO, CACHED, STREAM)
Strategy = Literal[STRATEGIES]
