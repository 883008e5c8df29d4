"""The ``start:stop:num`` syntax of ``--alphas`` and ``--grid``: evenly spaced points."""

from __future__ import annotations

import math

from landscape_cli.errors import LandscapeError

#: ``parse_grid`` refuses more points than this per axis (a typo, not a grid).
MAX_GRID_POINTS = 1_000_000


def parse_grid(text: str, option: str) -> list[float]:
    """``start:stop:num``: ``num`` ≥ 2 evenly spaced points from ``start`` to ``stop``
    inclusive, ``start`` < ``stop``, both finite. Anything else is refused with a LandscapeError
    naming ``option`` and the text, one line (``--grid 1:0:5: start must be less than stop``)."""

    def error(message: str) -> LandscapeError:
        return LandscapeError(f"{option} {text}: {message}")

    parts = text.strip().split(":")
    if len(parts) != 3:
        raise error("expected start:stop:num (for example -1:1:21)")
    bounds = []
    for label, part in zip(("start", "stop"), parts[:2]):
        try:
            value = float(part)
        except ValueError:
            raise error(f"{label} {part.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise error(f"{label} must be a finite number")
        bounds.append(value)
    try:
        num = int(parts[2])
    except ValueError:
        raise error(f"num {parts[2].strip()!r} is not a whole number of points") from None
    start, stop = bounds
    if num < 2:
        raise error("at least 2 points")
    if num > MAX_GRID_POINTS:
        raise error(f"at most {MAX_GRID_POINTS} points")
    if not start < stop:
        raise error("start must be less than stop")
    step = (stop - start) / (num - 1)
    if not math.isfinite(step):
        raise error("the range is too wide")
    return [start + (stop - start) * i / (num - 1) for i in range(num - 1)] + [stop]
