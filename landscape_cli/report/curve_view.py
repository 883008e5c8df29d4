"""The terminal view of an ``interpolate`` report: the loss along a line or a curve as a small
block chart with both endpoints and the barrier's α marked, a plane's loss grid as a shaded map
with the checkpoints' cells marked, and many checkpoints' barrier matrix as a table.

Nothing is computed here: every number printed is the document's own (a barrier shown is
``results.barrier``, never one worked out from the points); only the drawing's scale (the
smallest and largest value drawn) is read off the values. A null (NaN / Inf in the run) is drawn
as ``?`` and printed as ``null``. The helpers that name checkpoints and read numbers are shared
with ``report.plot``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

CHART_ROWS = 6       # height of a curve chart, in text rows (8 levels each)
CHART_WIDTH = 64     # the most text columns a curve chart takes
MAP_COLUMNS = 48     # the most grid columns a plane map shows (each is 1 or 2 text columns)
MAP_ROWS = 21        # the most grid rows a plane map shows
MAX_PAIR_LINES = 24  # pair curves drawn as sparklines under the barrier matrix
LOG_RATIO = 20.0     # a positive curve spanning more than this factor is drawn on a log scale
_BLOCKS = " ▁▂▃▄▅▆▇█"
_SHADES = "·░▒▓█"
_SHADE_STYLES = ("blue", "cyan", "green", "yellow", "red")
_MARKS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------- shared helpers


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (null, a bool, text, NaN or Inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: Any, spec: str = ".4g") -> str:
    """A number as the document holds it, ``null`` for a missing one."""
    x = number(value)
    return "null" if x is None else format(x, spec)


def short_names(names: Sequence[Any]) -> list[str]:
    """The checkpoints' names without the folders they all share (``runs/s0/final.pt`` and
    ``runs/s1/final.pt`` read ``s0/final.pt`` and ``s1/final.pt``): still distinct, shorter."""
    names = [str(n) for n in names]
    if len(names) < 2:
        return [os.path.basename(n.rstrip("/")) or n for n in names]
    parts = [n.split("/") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def endpoint_names(results: dict[str, Any]) -> tuple[str, str]:
    """The full names of A and B of a line or curve (B is not the control point ``via``)."""
    names = [str(n) for n in results.get("checkpoints") or []]
    via = results.get("via")
    a = names[0] if names else "A"
    rest = [n for n in names[1:] if n != via] or names[1:]
    return a, (rest[0] if rest else "B")


def curve_series(points: Any, key: str = "loss") -> tuple[list[float | None], list[float | None]]:
    """The α's and ``key``'s values of a list of points, None where missing."""
    points = [p for p in points or [] if isinstance(p, dict)]
    return [number(p.get("alpha")) for p in points], [number(p.get(key)) for p in points]


def nearest(values: Sequence[float | None], target: float | None) -> int | None:
    """The index of the value nearest ``target`` (where to draw a mark); None when ``target``
    is missing or outside the values' range."""
    finite = [v for v in values if v is not None]
    if target is None or not finite or not min(finite) - 1e-9 <= target <= max(finite) + 1e-9:
        return None
    return min((abs(v - target), i) for i, v in enumerate(values) if v is not None)[1]


def point_at(points: Any, alpha: float, key: str = "loss") -> float | None:
    """``key`` of the point whose α is ``alpha`` (to 1e-9), None when the grid has no such point."""
    alphas, values = curve_series(points, key)
    for a, v in zip(alphas, values):
        if a is not None and abs(a - alpha) <= 1e-9:
            return v
    return None


def position(value: Any) -> tuple[float | None, float | None]:
    """A checkpoint's ``[x, y]`` in a plane, None for a coordinate that is missing."""
    xy = list(value) if isinstance(value, (list, tuple)) else []
    return number(xy[0]) if xy else None, number(xy[1]) if len(xy) > 1 else None


def _scale(values: Sequence[float | None]) -> tuple[float, float, bool] | None:
    """(low, high, log) of the finite values drawn: log when all are positive and span more
    than ``LOG_RATIO``; None when there is nothing to draw."""
    finite = [v for v in values if v is not None]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    log = lo > 0 and hi / lo > LOG_RATIO
    return lo, hi, log


def _fraction(value: float, scale: tuple[float, float, bool]) -> float:
    lo, hi, log = scale
    if log:
        value, lo, hi = math.log10(value), math.log10(lo), math.log10(hi)
    return 0.5 if hi <= lo else max(0.0, min(1.0, (value - lo) / (hi - lo)))


# ----------------------------------------------------------------------------- a line or a curve


def curve_chart(alphas: Sequence[float | None], losses: Sequence[float | None],
                scale: tuple[float, float, bool], marks: dict[int, str],
                rows: int = CHART_ROWS) -> Text:
    """A column of eighth blocks per point of the curve (the loss, bottom = the scale's low end),
    then a baseline with ``marks`` (point index → letter) and the α range under it."""
    n = len(losses)
    width = max(1, min(3, CHART_WIDTH // max(n, 1)))
    lo, hi, log = scale
    top_label, bottom_label = format(hi, ".4g"), format(lo, ".4g")
    gutter = max(len(top_label), len(bottom_label))
    levels = [None if v is None else max(1, round(_fraction(v, scale) * rows * 8)) for v in losses]
    text = Text()
    for r in range(rows):
        label = top_label if r == 0 else bottom_label if r == rows - 1 else ""
        text.append(f"{label:>{gutter}} {'┤' if label else '│'}", style="dim")
        floor = (rows - 1 - r) * 8
        for i, level in enumerate(levels):
            if level is None:
                glyph = "?" if r == rows - 1 else " "
                text.append(glyph * width, style="red")
                continue
            filled = level - floor
            glyph = _BLOCKS[8] if filled >= 8 else _BLOCKS[max(filled, 0)]
            inside = alphas[i] is not None and -1e-9 <= alphas[i] <= 1 + 1e-9
            text.append(glyph * width, style="cyan" if inside else "blue")
        text.append("\n")
    base = ["─"] * (n * width)
    for i, mark in marks.items():
        base[i * width + (width - 1) // 2] = mark
    text.append(f"{'':>{gutter}} └", style="dim")
    for glyph in base:
        text.append(glyph, style="bold" if glyph != "─" else "dim")
    first = next((a for a in alphas if a is not None), None)
    last = next((a for a in reversed(alphas) if a is not None), None)
    left, right = f"α {fmt(first, '.3g')}", fmt(last, ".3g")
    pad = max(1, n * width + 1 - len(left) - len(right))
    text.append(f"\n{'':>{gutter}}  {left}{' ' * pad}{right}", style="dim")
    if log:
        text.append("  (log scale)", style="dim")
    return text


def _curve_marks(alphas: Sequence[float | None], alpha_max: Any) -> dict[int, str]:
    """Where A (α = 0), B (α = 1) and the barrier (``^`` at ``alpha_max``) sit on the baseline."""
    marks: dict[int, str] = {}
    peak = nearest(alphas, number(alpha_max))
    if peak is not None:
        marks[peak] = "^"
    for alpha, mark in ((0.0, "A"), (1.0, "B")):
        i = nearest(alphas, alpha)
        if i is not None:
            marks[i] = mark
    return marks


def curve_summary(results: dict[str, Any]) -> list[str]:
    """The barrier line (the document's numbers), then the other barriers the report holds."""
    lines = [f"barrier {fmt(results.get('barrier'))} at α = {fmt(results.get('alpha_max'), '.3g')} "
             f"(loss_a {fmt(results.get('loss_a'))}, loss_b {fmt(results.get('loss_b'))})"]
    more = [f"barrier_mid_ends {fmt(results.get('barrier_mid_ends'))}"]
    if "error_barrier" in results:
        more.append(f"error_barrier {fmt(results.get('error_barrier'))}")
    if "barrier_unaligned" in results:
        more.append(f"before alignment {fmt(results.get('barrier_unaligned'))}")
    lines.append(" · ".join(more))
    return lines


def line_extras(results: dict[str, Any]) -> list[Any]:
    a, b = endpoint_names(results)
    short = short_names([a, b, *([results["via"]] if results.get("via") else [])])
    kind = "quadratic Bézier curve" if results.get("path") == "curve" or results.get("via") else "line"
    via = f" via {escape(short[2])}" if len(short) > 2 else ""
    bn = ", BatchNorm recalibrated at every point" if results.get("recalibrate_bn") else ""
    out: list[Any] = ["", f"[bold]loss along the {kind}[/] [dim](A = {escape(short[0])}, "
                          f"B = {escape(short[1])}{via}{bn}; ^ marks alpha_max)[/]"]
    alphas, losses = curve_series(results.get("points"))
    eval_alphas, eval_losses = curve_series(results.get("eval_points"))
    scale = _scale([*losses, *eval_losses])
    if scale is None:
        out.append("[dim](no finite loss to draw)[/]")
    else:
        if losses:
            out.append(curve_chart(alphas, losses, scale, _curve_marks(alphas, results.get("alpha_max"))))
        if eval_losses:
            out += ["[bold]eval loss[/] [dim](same scale)[/]",
                    curve_chart(eval_alphas, eval_losses, scale, _curve_marks(eval_alphas, None))]
    return [*out, *(escape(line) for line in curve_summary(results))]


# ----------------------------------------------------------------------------- a plane


def _picks(length: int, most: int) -> list[int]:
    """Evenly spread indices of ``length`` items, at most ``most`` of them (a map's cells)."""
    if length <= most:
        return list(range(length))
    return sorted({round(i * (length - 1) / (most - 1)) for i in range(most)})


def plane_map(plane: dict[str, Any]) -> tuple[Text | None, list[str]]:
    """The loss grid as shades (top row = the largest y), the checkpoints' cells lettered; and
    the legend's lines."""
    xs = [number(v) for v in plane.get("x") or []]
    ys = [number(v) for v in plane.get("y") or []]
    grid = [[number(v) for v in row] if isinstance(row, list) else [] for row in plane.get("loss") or []]
    scale = _scale([v for row in grid for v in row])
    if not xs or not ys or scale is None:
        return None, ["(no finite loss to draw)"]
    columns, rows = _picks(len(xs), MAP_COLUMNS), _picks(len(ys), MAP_ROWS)
    width = 2 if len(columns) <= MAP_COLUMNS // 2 else 1
    coordinates = plane.get("coordinates") or {}
    names = short_names(list(coordinates))
    cells: dict[tuple[int, int], str] = {}
    legend = []
    for k, (name, short) in enumerate(zip(coordinates, names)):
        mark = _MARKS[k % len(_MARKS)]
        cx, cy = position(coordinates[name])
        where = f"({fmt(cx)}, {fmt(cy)})"
        shown_x, shown_y = [xs[i] for i in columns], [ys[j] for j in rows]
        inside = (cx is not None and cy is not None and all(v is not None for v in shown_x + shown_y)
                  and min(shown_x) <= cx <= max(shown_x) and min(shown_y) <= cy <= max(shown_y))
        ci, ri = nearest(shown_x, cx), nearest(shown_y, cy)
        if inside and ci is not None and ri is not None:
            cells.setdefault((ri, ci), mark)
        else:
            where += " outside the grid"
        legend.append(f"{mark} = {short} at {where}")
    lo, hi, log = scale
    y_top, y_bottom = fmt(ys[rows[-1]], ".3g"), fmt(ys[rows[0]], ".3g")
    gutter = max(len(y_top), len(y_bottom)) + 2
    text = Text()
    for r_pos in range(len(rows) - 1, -1, -1):  # largest y first
        j = rows[r_pos]
        label = f"y {y_top}" if r_pos == len(rows) - 1 else f"y {y_bottom}" if r_pos == 0 else ""
        text.append(f"{label:>{gutter}} │", style="dim")
        row = grid[j] if j < len(grid) else []
        for c_pos, i in enumerate(columns):
            mark = cells.get((r_pos, c_pos))
            value = row[i] if i < len(row) else None
            if value is None:
                glyph, style = "?", "red"
            else:
                level = min(len(_SHADES) - 1, int(_fraction(value, scale) * len(_SHADES)))
                glyph, style = _SHADES[level], _SHADE_STYLES[level]
            if mark is not None:
                text.append(mark, style="bold reverse")
                text.append(glyph * (width - 1), style=style)
            else:
                text.append(glyph * width, style=style)
        text.append("\n")
    left, right = f"x {fmt(xs[columns[0]], '.3g')}", fmt(xs[columns[-1]], ".3g")
    span = len(columns) * width
    text.append(f"{'':>{gutter}} └{'─' * span}\n{'':>{gutter}}  {left}"
                f"{' ' * max(1, span - len(left) - len(right))}{right}", style="dim")
    shades = " ".join(_SHADES)
    legend.insert(0, f"loss from {lo:.4g} to {hi:.4g}{' (log scale)' if log else ''}: {shades}"
                     f"{' · ? = null' if any(v is None for row in grid for v in row) else ''}")
    return text, legend


def plane_extras(results: dict[str, Any]) -> list[Any]:
    plane = results.get("plane") or {}
    directions = plane.get("directions")
    shape = f"{len(plane.get('x') or [])} × {len(plane.get('y') or [])}"
    out: list[Any] = ["", f"[bold]loss plane[/] [dim]({escape(str(directions))} directions, "
                          f"{shape} grid; rows are y)[/]"]
    drawing, legend = plane_map(plane)
    if drawing is not None:
        out.append(drawing)
    return [*out, *(escape(line) for line in legend)]


# ----------------------------------------------------------------------------- many checkpoints


def sparkline(values: Sequence[float | None]) -> str:
    """One row of eighth blocks, ``?`` for a null."""
    scale = _scale(values)
    if scale is None:
        return "?" * len(values)
    return "".join("?" if v is None else _BLOCKS[1 + round(_fraction(v, scale) * 7)] for v in values)


def barrier_table(results: dict[str, Any]) -> Table:
    """The barrier matrix as the document holds it: a row and a column per checkpoint."""
    names = short_names(results.get("checkpoints") or [])
    matrix = results.get("barrier_matrix") or []
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("barrier", no_wrap=True)
    for name in names:
        table.add_column(escape(name), justify="right")
    for i, name in enumerate(names):
        row = matrix[i] if i < len(matrix) and isinstance(matrix[i], list) else []
        cells = [fmt(row[j]) if j < len(row) else "null" for j in range(len(names))]
        table.add_row(escape(name), *(("–" if c == "null" else c) for c in cells))
    return table


def pairs_extras(results: dict[str, Any]) -> list[Any]:
    names = short_names(results.get("checkpoints") or [])
    out: list[Any] = ["", f"[bold]pairwise barriers[/] [dim]({len(names)} checkpoints; "
                          "row = A, column = B; – = not computed or null)[/]", barrier_table(results)]
    curves = [c for c in results.get("curves") or [] if isinstance(c, dict)]
    for curve in curves[:MAX_PAIR_LINES]:
        a, b = curve.get("a"), curve.get("b")
        label_a = names[a] if isinstance(a, int) and 0 <= a < len(names) else str(a)
        label_b = names[b] if isinstance(b, int) and 0 <= b < len(names) else str(b)
        out.append(escape(f"{label_a} → {label_b}  {sparkline(curve_series(curve.get('points'))[1])}  "
                          f"barrier {fmt(curve.get('barrier'))}"))
    if len(curves) > MAX_PAIR_LINES:
        out.append(f"[dim]… and {len(curves) - MAX_PAIR_LINES} more pairs (see --format json)[/]")
    return out


# ----------------------------------------------------------------------------- the command's extras


def interpolate_extras(results: dict[str, Any]) -> list[Any]:
    """What ``interpolate`` shows under its table at a terminal, by the report's ``path``."""
    path = results.get("path")
    if path == "plane" or (path is None and "plane" in results):
        return plane_extras(results)
    if path == "pairs" or (path is None and "barrier_matrix" in results):
        return pairs_extras(results)
    if path in ("line", "curve") or results.get("points") or "barrier" in results:
        return line_extras(results)
    return []
