"""Reports as a pandas DataFrame (``pip install landscape-cli[pandas]``): one row per JSON report
or batch line, with flat columns, for notebooks (DESIGN §11)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas

from landscape_cli.errors import LandscapeError
from landscape_cli.paths import expand
from landscape_cli.sweep.flat import read_documents, row_of


def _expanded(given: str) -> list[str]:
    try:
        return expand(given)
    except LandscapeError:
        raise LandscapeError(f"no report matches '{given}'") from None


def read_reports(paths: str | Path | Iterable[str | Path]) -> pandas.DataFrame:
    """A DataFrame of the reports in ``paths`` (files or globs, in natural order): one row per
    JSON report or batch line, failed and interrupted ones included (``status``)."""
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = [Path(found) for item in given for found in _expanded(str(item))]
    return pandas.DataFrame([row_of(doc, path) for path in files for doc in read_documents(path)[0]])
