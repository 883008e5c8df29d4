"""Density plots from a report document (matplotlib, optional: ``pip install
'landscape-cli[plot]'``). Nothing is computed here: the curve is ``results.density.grid`` and
``values``, the rug its ``nodes``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError
from landscape_cli.report.output import Destination, destination, write_file

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
    """A semilog-y plot of the density with the quadrature nodes as a rug, written atomically
    (``output.write_file``)."""
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

    suffix = dest.path.suffix.lower().lstrip(".")
    write_file(dest, lambda path: figure.savefig(path, format=suffix))
