"""``landscape report``: one self-contained HTML page (no external URL, works offline) from JSON
reports and batch JSONL. Rendering only: every number on the page is in the documents.

A JSON report gets a section: what it analysed, its figure (a density, per-block spectra, an
interpolation curve, a plane's contours, a barrier matrix's heat map; inline SVG), its table as
the CLI shows it, and every scalar with its error. A batch file gets its trend against the step
with the stability edge, and a table with a row per checkpoint. Each cell's exact number is in
its ``data-value``; the text shows six significant digits.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landscape_cli.commands import COMMANDS
from landscape_cli.report import plot
from landscape_cli.report.render import rows_of
from landscape_cli.results.base import Result
from landscape_cli.sweep import trend
from landscape_cli.sweep.flat import row_of

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 2px 7px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.text { text-align: left; }
figure { margin: 0.8em 0; } figure svg { max-width: 100%; height: auto; }
.warning { color: #9a5b00; } .meta { color: #666; } .scroll { overflow-x: auto; }
"""
#: the columns a sweep's table leaves out: where a row comes from is its first column
_PLACE = {"source", "command", "checkpoint", "global_step", "epoch", "error"}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<td data-value="null">–</td>'
    if isinstance(value, bool):
        return f'<td data-value="{json.dumps(value)}">{"yes" if value else "no"}</td>'
    if isinstance(value, (int, float)):
        return f'<td data-value="{json.dumps(value)}">{value:.6g}</td>'
    if isinstance(value, (list, tuple)):
        return f'<td class="text" data-value="{html.escape(json.dumps(value))}">' \
               f'{html.escape(", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value))}</td>'
    return f'<td class="text" data-value="{html.escape(json.dumps(value))}">{html.escape(str(value))}</td>'


def _table(rows: list[dict[str, Any]], name: str) -> str:
    """An HTML table of ``rows`` (their keys, in first-seen order, are the columns)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table data-table="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figure(name: str, make: Callable[[], Any]) -> str:
    return f'<figure data-figure="{name}">{plot.svg(make())}</figure>'


def _figures(doc: dict[str, Any]) -> list[str]:
    """The pictures of one report, by what its results hold."""
    results = doc.get("results") or {}
    out = []
    if isinstance(results.get("density"), dict):
        out.append(_figure("density", lambda: plot.density_figure(doc)))
    if results.get("blocks"):
        out.append(_figure("blocks", lambda: plot.blocks_figure(doc)))
    if doc.get("command") == "interpolate" and doc.get("status") != "error":
        kind = ("plane" if "plane" in results else "barrier_matrix" if "barrier_matrix" in results
                else "curve")
        out.append(_figure(kind, lambda: plot.interpolate_figure(doc)))
    return out


def _scalars(doc: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    """Every scalar of the report with its error, one row each (``sweep.flat.row_of``)."""
    row = row_of(doc, source)
    return [{"name": k, "value": v} for k, v in row.items()
            if k not in _PLACE | {"status", "step"} and isinstance(v, (int, float, bool))]


def _report_section(doc: dict[str, Any], source: Path, index: int) -> str:
    checkpoint = doc.get("checkpoint") or {}
    settings = doc.get("settings") or {}
    spec = COMMANDS.get(doc.get("command", ""))
    result: type[Result] = spec.result if spec is not None else Result
    parts = [f'<section data-report="{index}"><h2>{html.escape(str(doc.get("command")))} · '
             f'{html.escape(str(checkpoint.get("path")))}</h2>',
             f'<p class="meta">{html.escape(str(source))} · status {html.escape(str(doc.get("status")))}'
             f' · {checkpoint.get("n_params")} parameters · {settings.get("device")} · '
             f'{settings.get("dtype")} · {settings.get("n_samples")} samples</p>']
    if doc.get("status") == "error":
        parts.append(f'<p class="warning">{html.escape(str(doc.get("error")))}</p></section>')
        return "".join(parts)
    parts += _figures(doc)
    parts.append(_table(rows_of(doc, result), "results"))
    parts.append(_table(_scalars(doc, source), "scalars"))
    parts += [f'<p class="warning">warning: {html.escape(w)}</p>' for w in doc.get("warnings", [])]
    parts += [f'<p>gate {html.escape(g["expr"])}: {g["value"]} '
              f'{"FAILED" if g["violated"] else "ok"}</p>' for g in doc.get("gates", [])]
    return "".join(parts) + "</section>"


def _sweep_section(lines: list[dict[str, Any]], source: Path, index: int) -> str:
    ordered = trend.in_training_order(lines)
    rows = trend.trend(ordered)
    command = next((line.get("command") for line in lines if line.get("command")), "")
    metric = trend.metric_of(rows, command)
    parts = [f'<section data-sweep="{index}"><h2>{html.escape(command)} sweep · '
             f'{html.escape(str(source))}</h2><p class="meta">{len(lines)} checkpoint(s), '
             f'{sum(r["status"] == "ok" for r in rows)} ok; the trend of {html.escape(metric)}</p>']
    if any(r["value"] is not None for r in rows):
        parts.append(_figure("trend", lambda: plot.trend_figure(rows, command)))
    edge = trend.first_at_edge(rows)
    if edge is not None:
        parts.append(f"<p>{html.escape(metric)} first reaches its edge of stability at step "
                     f"{edge['step']:g}: {html.escape(str(edge['checkpoint']))} ({edge['value']:.4g}).</p>")
    table = [{"checkpoint": (line.get("checkpoint") or {}).get("path"),
              **{k: v for k, v in row_of(line, source).items() if k not in _PLACE}} for line in ordered]
    parts.append(_table(table, "sweep"))
    return "".join(parts) + "</section>"


def page(sources: list[tuple[Path, list[dict[str, Any]], bool]]) -> str:
    """The page of ``sources``: (file, its documents, whether it is a batch file)."""
    from landscape_cli import __version__

    sections = [(_sweep_section(docs, path, i) if batch else
                 "".join(_report_section(doc, path, i) for doc in docs))
                for i, (path, docs, batch) in enumerate(sources)]
    names = ", ".join(html.escape(str(path)) for path, _, _ in sources)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>landscape report</title><style>{STYLE}</style></head><body>"
            f"<h1>landscape report</h1><p class=\"meta\">landscape {__version__} · from {names}</p>"
            + "".join(sections) + "</body></html>\n")
