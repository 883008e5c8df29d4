"""The terminal view of a spectrum's SLQ density: a log-scale chart, one bar per bin of the
document's ``grid`` and ``values`` (bins are consecutive grid points; a bar shows the mean of
their values), as PyHessian users read its semilog plot, turned on its side."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

BINS = 40
BAR_WIDTH = 40
DECADES = 10  # the chart shows at most this many powers of ten below the peak
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(fraction: float, glyph: str) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return glyph * full + (_EIGHTHS[rest] if rest and glyph == "█" else glyph * bool(rest))


def density_chart(density: dict[str, Any], bins: int = BINS) -> Table:
    """λ (bin centre) │ bar of log10 density │ log10 density, for ``bins`` bins of the grid."""
    grid, values = density["grid"], density["values"]
    size = max(1, math.ceil(len(grid) / bins))
    chunks = [(grid[i:i + size], values[i:i + size]) for i in range(0, len(grid), size)]
    rows = [((g[0] + g[-1]) / 2, g[-1], sum(v) / len(v)) for g, v in chunks]
    logs = [math.log10(v) if v > 0 else None for _, _, v in rows]
    top = max((x for x in logs if x is not None), default=0.0)
    floor = max(min((x for x in logs if x is not None), default=top - 1), top - DECADES)
    span = max(top - floor, 1e-12)
    threshold = density.get("negative_threshold")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("λ", justify="right")
    table.add_column(f"log10 density  (bars from 10^{floor:.3g} to 10^{top:.3g})", no_wrap=True)
    table.add_column("log10", justify="right")
    for (centre, upper, _), log in zip(rows, logs):
        negative = threshold is not None and upper < -threshold
        if log is None or log < floor:
            bar, label = "", f"<{floor:.2f}"
        else:
            bar, label = _bar(0.02 + 0.98 * (log - floor) / span, "▓" if negative else "█"), f"{log:.2f}"
        table.add_row(f"{centre:.4g}", Text(bar, style="red" if negative else "cyan"), label)
    return table


def density_summary(density: dict[str, Any]) -> list[str]:
    """Two lines: the negative mass with its threshold, and the negative weight ratio."""
    stderr = density.get("negative_mass_stderr")
    plus = f" ± {stderr:.2g}" if isinstance(stderr, float) else ""
    ratio = density.get("negative_weight_ratio")
    ratio_text = "null" if ratio is None else f"{ratio:.4g}"
    return [f"negative_mass {density['negative_mass']:.4g}{plus}: share of eigenvalues below "
            f"−{density['negative_threshold']:.3g} (▓ bins)",
            f"negative_weight_ratio {ratio_text}: Σ_{{λ<0}}|λ| / Σ|λ|"]


def heterogeneity_line(results: dict[str, Any]) -> list[str]:
    """``--per-block --density``: the blocks' JS⁰, as the report holds it."""
    value = results.get("heterogeneity")
    if value is None:
        return []
    return [f"heterogeneity {value:.4g}: JS⁰, the mean pairwise Jensen–Shannon distance (base 2) "
            f"of the {len(results.get('blocks') or [])} block densities at a common "
            f"σ = {results.get('heterogeneity_sigma', float('nan')):.3g}"]


def spectrum_extras(results: dict[str, Any]) -> list[Any]:
    """What ``spectrum`` shows under its eigenvalue table when the report holds a density (and
    with --per-block --density, the heterogeneity of the blocks)."""
    density = results.get("density")
    if not density:
        return heterogeneity_line(results)
    head = (f"[bold]eigenvalue density[/] [dim](SLQ: {density.get('runs')} runs × "
            f"{density.get('steps')} steps, Gaussian σ = {density.get('sigma', float('nan')):.3g}, "
            f"λ from {density.get('lambda_min', float('nan')):.4g} to "
            f"{density.get('lambda_max', float('nan')):.4g})[/]")
    return ["", head, density_chart(density), *density_summary(density),
            *heterogeneity_line(results)]
