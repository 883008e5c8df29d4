"""Density plots from a report document (matplotlib, optional: ``pip install
'landscape-cli[plot]'``). Nothing is computed here: the curve is ``results.density.grid`` and
``values``, the rug its ``nodes``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError

SUFFIXES = ("png", "svg", "pdf")


def check_destination(path: Path) -> None:
    """Refuse, before any work is done, a path whose suffix matplotlib will not be asked to
    write, or a plot when matplotlib is missing."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise LandscapeError(f"--plot {path}: the file name must end in .png, .svg or .pdf "
                             f"(got {path.suffix or 'no suffix'})")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LandscapeError("--plot needs matplotlib, which is not installed: "
                             "pip install 'landscape-cli[plot]'") from None
    if path.exists() and path.is_dir():
        raise LandscapeError(f"--plot {path}: is a folder")


def write_density_plot(document: dict[str, Any], path: Path) -> None:
    """A semilog-y plot of the density with the quadrature nodes as a rug, written atomically
    (a temporary file beside ``path``, then renamed over it)."""
    check_destination(path)
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

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower().lstrip(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{suffix}", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format=suffix)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; a plot is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
