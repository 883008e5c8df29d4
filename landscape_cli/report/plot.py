"""Plots from a report document (matplotlib, optional: ``pip install 'landscape-cli[plot]'``).
Nothing is computed here: a density's curve is ``results.density.grid`` and ``values``, the rug
its ``nodes``; an ``interpolate`` plot draws the document's points, grid and barrier matrix, and
writes its barriers as the document holds them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError
from landscape_cli.report.curve_view import (
    curve_series,
    endpoint_names,
    fmt,
    number,
    point_at,
    position,
    short_names,
)
from landscape_cli.report.output import Destination, destination, write_file
from landscape_cli.results.sharpness import EDGES

SUFFIXES = ("png", "svg", "pdf")


def check_destination(path: Path, inputs: Iterable[Path | str] = ()) -> Destination:
    """Refuse, before any work is done, a path whose suffix matplotlib will not be asked to
    write, a plot when matplotlib is missing, or a destination ``output.destination`` refuses."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise LandscapeError(f"--plot {path}: the file name must end in .png, .svg or .pdf "
                             f"(got {path.suffix or 'no suffix'})")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LandscapeError("--plot needs matplotlib, which is not installed: "
                             "pip install 'landscape-cli[plot]'") from None
    return destination(path, "--plot", inputs)


def write_density_plot(document: dict[str, Any], dest: Destination) -> None:
    """``density_figure``, written atomically (``output.write_file``)."""
    _save(density_figure(document), dest)


def density_figure(document: dict[str, Any]) -> Any:
    """A semilog-y plot of the density with the quadrature nodes as a rug."""
    from matplotlib.figure import Figure

    density = document["results"]["density"]
    grid, values = density["grid"], density["values"]
    peak = max(values)
    positive = [v for v in values if v > 0]
    bottom = max(min(positive), peak * 1e-12) if positive else 1e-12

    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.semilogy(grid, [max(v, bottom) for v in values], color="C0", linewidth=1.2,
                  label=f"SLQ density (σ = {density['sigma']:.3g})")
    nodes = [x for run in density["nodes"] for x in run]
    axes.vlines(nodes, 0, 0.04, transform=axes.get_xaxis_transform(), color="0.3",
                linewidth=0.5, alpha=0.6, label=f"quadrature nodes ({density['runs']} runs)")
    threshold = density["negative_threshold"]
    if -threshold > grid[0]:
        axes.axvspan(grid[0], -threshold, color="C3", alpha=0.08,
                     label=f"λ < −{threshold:.3g} (negative mass)")
    axes.axvline(0, color="0.5", linewidth=0.6, linestyle="--")
    axes.set_xlim(grid[0], grid[-1])
    axes.set_ylim(bottom, peak * 3)
    axes.set_xlabel("eigenvalue λ")
    axes.set_ylabel("density (log scale)")
    path_label = document.get("checkpoint", {}).get("path", "")
    axes.set_title(f"Hessian eigenvalue density  {path_label}", fontsize=9, loc="left")
    ratio = density.get("negative_weight_ratio")
    axes.text(0.99, 0.97, f"negative mass {density['negative_mass']:.4g}\n"
              f"negative weight ratio {'n/a' if ratio is None else f'{ratio:.4g}'}",
              transform=axes.transAxes, ha="right", va="top", fontsize=8)
    axes.legend(loc="upper center", fontsize=8, frameon=False)
    return figure


def _save(figure: Any, dest: Destination) -> None:
    """Write ``figure`` in the format its destination's suffix names, atomically; an SVG keeps
    its text as text (names and numbers can be searched and read), not as glyph outlines."""
    import matplotlib

    suffix = dest.path.suffix.lower().lstrip(".")

    def save(path: Path) -> None:
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            figure.savefig(path, format=suffix)

    write_file(dest, save)


# ----------------------------------------------------------------------------- interpolate


def _nan(values: Any) -> list[float]:
    """Numbers for matplotlib: a null (or anything not a finite number) is NaN, a gap."""
    return [float("nan") if v is None else v for v in (number(x) for x in values)]


def _title(document: dict[str, Any], text: str) -> str:
    bn = " · BatchNorm recalibrated" if document["results"].get("recalibrate_bn") else ""
    return f"{text}{bn}"


def _line_axes(figure: Any, document: dict[str, Any]) -> None:
    """Loss against α (train solid, eval dashed), accuracy on a twin axis, A and B marked and
    named, the barrier's α marked and its numbers written."""
    results = document["results"]
    a_name, b_name = endpoint_names(results)
    via = results.get("via")
    short = short_names([a_name, b_name, *([via] if via else [])])
    axes = figure.add_subplot()
    series = [("points", "train", "-")]
    if results.get("eval_points"):
        series.append(("eval_points", "eval", "--"))
    for key, label, style in series:
        alphas, losses = curve_series(results.get(key))
        axes.plot(_nan(alphas), _nan(losses), style, color="C0", marker=".", markersize=4,
                  linewidth=1.3, label=f"{label} loss")
    accuracy_axes = None
    for key, label, style in series:
        alphas, accuracy = curve_series(results.get(key), "accuracy")
        if any(v is not None for v in accuracy):
            accuracy_axes = accuracy_axes or axes.twinx()
            accuracy_axes.plot(_nan(alphas), _nan(accuracy), style, color="C1", linewidth=1.0,
                               alpha=0.8, label=f"{label} accuracy")
    if accuracy_axes is not None:
        accuracy_axes.set_ylabel("accuracy", color="C1")
        accuracy_axes.tick_params(axis="y", colors="C1")

    # the endpoints: the document's loss_a / loss_b (train), the eval curve's own points at 0, 1
    ends = [(0.0, results.get("loss_a"), f"A: {short[0]}"), (1.0, results.get("loss_b"), f"B: {short[1]}")]
    for alpha, loss, label in ends:
        axes.axvline(alpha, color="0.6", linewidth=0.6, linestyle=":")
        y = number(loss)
        if y is not None:
            axes.plot([alpha], [y], "o", color="C3", markersize=6, zorder=5)
        axes.annotate(label, xy=(alpha, 1), xycoords=("data", "axes fraction"), xytext=(0, 3),
                      textcoords="offset points", ha="center", va="bottom", fontsize=8)
        if len(series) > 1:
            eval_y = point_at(results.get("eval_points"), alpha)
            if eval_y is not None:
                axes.plot([alpha], [eval_y], "o", markerfacecolor="white", markeredgecolor="C3",
                          markersize=6, zorder=5)
    loss_a, loss_b = number(results.get("loss_a")), number(results.get("loss_b"))
    if loss_a is not None and loss_b is not None:  # the chord the barrier is measured from
        axes.plot([0, 1], [loss_a, loss_b], color="0.5", linewidth=0.8, linestyle=":",
                  label="(1−α)·loss_a + α·loss_b")
    alpha_max = number(results.get("alpha_max"))
    if alpha_max is not None:
        axes.axvline(alpha_max, color="C3", linewidth=0.9, linestyle="--",
                     label=f"alpha_max = {alpha_max:.3g}")
    lines = [f"barrier {fmt(results.get('barrier'))} at α = {fmt(results.get('alpha_max'), '.3g')}",
             f"barrier_mid_ends {fmt(results.get('barrier_mid_ends'))}"]
    if "error_barrier" in results:
        lines.append(f"error_barrier {fmt(results.get('error_barrier'))}")
    if "barrier_unaligned" in results:
        lines.append(f"before alignment {fmt(results.get('barrier_unaligned'))}")
    axes.text(0.01, 0.97, "\n".join(lines), transform=axes.transAxes, ha="left", va="top",
              fontsize=8, bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.85})
    axes.set_xlabel("t (Bézier parameter)" if via else "α")
    axes.set_ylabel("loss")
    handles, labels = axes.get_legend_handles_labels()
    if accuracy_axes is not None:
        more = accuracy_axes.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axes.legend(handles, labels, loc="upper right", fontsize=7, frameon=False)
    kind = f"quadratic Bézier curve via {short[2]}" if via else "linear interpolation"
    axes.set_title(_title(document, f"loss along the {kind}"), fontsize=9, loc="left", pad=14)


def _plane_axes(figure: Any, document: dict[str, Any]) -> None:
    """A filled contour of the loss grid (rows are y), log-scaled colours when every value is
    positive, each checkpoint marked and named at its coordinates."""
    import numpy as np
    from matplotlib.colors import LogNorm

    results = document["results"]
    plane = results.get("plane") or {}
    xs, ys = np.array(_nan(plane.get("x") or [])), np.array(_nan(plane.get("y") or []))
    rows = [row if isinstance(row, list) else [] for row in plane.get("loss") or []]
    width = len(xs)
    grid = np.array([_nan((row + [None] * width)[:width]) for row in rows], dtype=float)
    grid = np.ma.masked_invalid(grid.reshape(len(rows), width))
    axes = figure.add_subplot()
    finite = grid.compressed()
    if finite.size and len(xs) >= 2 and len(ys) >= 2 and grid.shape == (len(ys), len(xs)):
        lo, hi = float(finite.min()), float(finite.max())
        log = lo > 0
        if hi <= lo:  # a flat grid: one band around its value
            lo, hi = (lo / 1.01, hi * 1.01) if log else (lo - 0.5, hi + 0.5)
        levels = np.geomspace(lo, hi, 21) if log else np.linspace(lo, hi, 21)
        filled = axes.contourf(xs, ys, grid, levels=levels, norm=LogNorm(lo, hi) if log else None,
                               cmap="viridis", extend="neither")
        axes.contour(xs, ys, grid, levels=levels[::4], colors="white", linewidths=0.4, alpha=0.6)
        colorbar = figure.colorbar(filled, ax=axes, ticks=levels[::4], format="%.3g")
        colorbar.minorticks_off()
        colorbar.set_label("loss (log scale)" if log else "loss")
        if grid.mask.any():
            axes.text(0.99, 0.01, "blank: null loss", transform=axes.transAxes, ha="right",
                      va="bottom", fontsize=7)
    else:
        axes.text(0.5, 0.5, "no finite loss grid to draw", transform=axes.transAxes,
                  ha="center", va="center")
    coordinates = plane.get("coordinates") or {}
    for name, short in zip(coordinates, short_names(list(coordinates))):
        cx, cy = position(coordinates[name])
        if cx is None or cy is None:
            continue
        axes.plot([cx], [cy], "o", color="white", markeredgecolor="black", markersize=7, zorder=5)
        axes.annotate(short, (cx, cy), xytext=(5, 5), textcoords="offset points", fontsize=8,
                      color="black", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75,
                                           "pad": 1})
    trajectory = [position(c) for c in plane.get("trajectory") or []]
    if trajectory:  # the run's path through its PCA plane, in training order
        axes.plot([c[0] for c in trajectory], [c[1] for c in trajectory], "-", color="white",
                  linewidth=1.2, zorder=4, label="trajectory")
    explained = plane.get("explained_variance")
    directions = plane.get("directions")
    axes.set_xlabel("x (direction 1" + (f", {explained[0]:.1%} explained)" if explained else ")"))
    axes.set_ylabel("y (direction 2" + (f", {explained[1]:.1%} explained)" if explained else ")"))
    axes.set_title(_title(document, f"loss plane ({directions} directions)"), fontsize=9, loc="left")


def _pairs_axes(figure: Any, document: dict[str, Any]) -> None:
    """The barrier matrix as a heat map, names on both axes and the numbers in the cells; the
    pairs' curves beside it when the document holds them."""
    import matplotlib
    import numpy as np

    results = document["results"]
    names = short_names(results.get("checkpoints") or [])
    n = len(names)
    matrix = [row if isinstance(row, list) else [] for row in results.get("barrier_matrix") or []]
    matrix = (matrix + [[]] * n)[:n]
    values = np.ma.masked_invalid(np.array([_nan((row + [None] * n)[:n]) for row in matrix],
                                           dtype=float).reshape(n, n))
    curves = [c for c in results.get("curves") or [] if isinstance(c, dict)]
    heat = figure.add_subplot(1, 2 if curves else 1, 1)
    finite = values.compressed()
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="0.85")  # a null cell is grey
    image = heat.imshow(values, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
    figure.colorbar(image, ax=heat, label="loss barrier", shrink=0.8)
    heat.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    heat.set_yticks(range(n), names, fontsize=8)
    heat.set_xlabel("B")
    heat.set_ylabel("A")
    for i in range(n):
        for j in range(n):
            value = values[i, j]
            masked = value is np.ma.masked
            dark = not masked and hi > lo and (float(value) - lo) / (hi - lo) > 0.6
            heat.text(j, i, "–" if masked else f"{float(value):.3g}", ha="center", va="center",
                      fontsize=7, color="white" if dark else "black")
    heat.set_title(_title(document, "pairwise loss barriers"), fontsize=9, loc="left")
    if curves:
        axes = figure.add_subplot(1, 2, 2)
        for k, curve in enumerate(curves):
            a, b = curve.get("a"), curve.get("b")
            label_a = names[a] if isinstance(a, int) and 0 <= a < n else str(a)
            label_b = names[b] if isinstance(b, int) and 0 <= b < n else str(b)
            alphas, losses = curve_series(curve.get("points"))
            axes.plot(_nan(alphas), _nan(losses), color=f"C{k % 10}", linewidth=1.0,
                      label=f"{label_a} → {label_b} (barrier {fmt(curve.get('barrier'), '.3g')})")
        for alpha in (0, 1):
            axes.axvline(alpha, color="0.6", linewidth=0.6, linestyle=":")
        axes.set_xlabel("α")
        axes.set_ylabel("loss")
        axes.legend(fontsize=6, frameon=False, loc="best")
        axes.set_title("loss along each pair", fontsize=9, loc="left")


def write_interpolate_plot(document: dict[str, Any], dest: Destination) -> None:
    """``interpolate_figure``, written atomically."""
    _save(interpolate_figure(document), dest)


def interpolate_figure(document: dict[str, Any]) -> Any:
    """The picture of an ``interpolate`` report, by its ``path``: the loss along the line or
    curve, the plane's contour, or the barrier matrix's heat map."""
    from matplotlib.figure import Figure

    results = document["results"]
    path = results.get("path")
    if path == "plane" or (path is None and "plane" in results):
        figure = Figure(figsize=(7, 5.5), layout="constrained")
        _plane_axes(figure, document)
    elif path == "pairs" or (path is None and "barrier_matrix" in results):
        wide = bool(results.get("curves"))
        figure = Figure(figsize=(12 if wide else 6.5, 5.5), layout="constrained")
        _pairs_axes(figure, document)
    else:
        figure = Figure(figsize=(7.5, 4.8), layout="constrained")
        _line_axes(figure, document)
    return figure


def write_trend_plot(rows: list[dict[str, Any]], command: str, lr: float | None,
                     dest: Destination) -> None:
    """``trend_figure``, written atomically."""
    _save(trend_figure(rows, command, lr), dest)


def trend_figure(rows: list[dict[str, Any]], command: str, lr: float | None = None) -> Any:
    """A sweep's main number against the training step (``batch.trend`` rows, in order); for
    λ_max with the training learning rate η, the edge of stability 2/η (Cohen et al. 2021); for
    the stability ratio, its edge 1 (Cohen et al. 2022)."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["value"] is not None]
    metric = next((r["metric"] for r in shown), "value")
    steps = [r["step"] if r["step"] is not None else i for i, r in enumerate(shown)]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    axes.plot(steps, [r["value"] for r in shown], marker="o", label=metric)
    if lr is not None and metric == "lambda_max":
        axes.axhline(2 / lr, color="tab:red", linestyle="--", label=f"2/η = {2 / lr:.4g}")
    if metric in EDGES:
        axes.axhline(EDGES[metric], color="tab:red", linestyle="--",
                     label="edge of stability (the optimizer's threshold)")
    axes.set_xlabel("training step" if any(r["step"] is not None for r in shown) else "checkpoint")
    axes.set_ylabel(metric)
    axes.set_title(f"landscape batch --command {command}: {len(rows)} checkpoint(s)")
    axes.legend()
    return figure


def blocks_figure(document: dict[str, Any]) -> Any:
    """``spectrum --per-block``: each block's top eigenvalues (bars, each smaller one in front of
    the larger), the blocks in the report's order."""
    from matplotlib.figure import Figure

    blocks = document["results"]["blocks"]
    figure = Figure(figsize=(7.5, 0.9 + 0.28 * len(blocks)), layout="constrained")
    axes = figure.add_subplot()
    names = [b["name"] for b in blocks]
    for rank in range(max((len(b["top_eigenvalues"]) for b in blocks), default=0)):  # λ₁ behind
        axes.barh(names, [_nan(b["top_eigenvalues"][rank:rank + 1] or [None])[0] for b in blocks],
                  color=f"C{rank}", label=f"λ_{rank + 1}")
    axes.invert_yaxis()
    axes.set_xlabel("eigenvalue of the diagonal block H_bb")
    heterogeneity = document["results"].get("heterogeneity")
    axes.set_title("top eigenvalues per block" + (
        "" if heterogeneity is None else f" · heterogeneity {heterogeneity:.4g}"), fontsize=9, loc="left")
    axes.legend(fontsize=7, frameon=False)
    return figure


def svg(figure: Any) -> str:
    """The figure as an inline ``<svg>`` element, its text kept as text."""
    import io

    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "landscape"}):
        figure.savefig(buffer, format="svg",  # no metadata: no date, no links to fetch
                       metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
