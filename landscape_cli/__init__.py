"""landscape: loss-landscape geometry of saved PyTorch checkpoints.

The Python API (DESIGN §10): ``analyze(command, checkpoint, config=None, **options)`` runs a
command in this process and returns its ``Report``; ``Session`` keeps a config's model and
data for many checkpoints; ``read_reports(paths)`` reads reports and batch lines into a pandas
DataFrame (the ``[pandas]`` extra). Imported on first use, so that ``import landscape_cli`` (and the
CLI's ``--help``) stays light."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"analyze": "landscape_cli.runner", "Report": "landscape_cli.report.document",
         "Session": "landscape_cli.session", "read_reports": "landscape_cli.integrations.dataframes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'landscape_cli' has no attribute {name!r}")


__all__ = ["Report", "Session", "__version__", "analyze", "read_reports"]
