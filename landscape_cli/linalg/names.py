"""The algorithms' names, declared once and torch-free (the CLI's ``--help`` reads them)."""

from __future__ import annotations

from typing import Literal

#: the trace estimators (``linalg/trace.py``): Hutch++ (Meyer et al. 2021), Hutchinson (1989)
TRACE_METHODS = ("hutchpp", "hutchinson")
TraceMethod = Literal[TRACE_METHODS]
