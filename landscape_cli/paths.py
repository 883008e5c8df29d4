"""Checkpoint paths as users give them: globs expanded in natural order (``epoch2`` before
``epoch10``)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from landscape_cli.errors import LandscapeError


def natural(text: str) -> list:
    """A sort key in which ``epoch2`` comes before ``epoch10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand(given: str) -> list[str]:
    """A path as given, or, when no such file exists and it holds ``*``, ``?`` or ``[``, the
    paths it matches (recursively with ``**``) in natural order; a pattern that matches
    nothing is an error naming it."""
    if Path(given).exists() or not set("*?[") & set(given):
        return [given]
    found = sorted(glob.glob(given, recursive=True), key=natural)
    if not found:
        raise LandscapeError(f"no checkpoint matches '{given}'")
    return found
