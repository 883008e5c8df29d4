"""Renderings of a report document: table (Rich) | json | jsonl | csv | md. No computing here:
every number shown is already in the document."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from landscape_cli.report.curve_view import interpolate_extras
from landscape_cli.report.density_view import spectrum_extras
from landscape_cli.results.base import Result
from landscape_cli.results.rows import table

FORMATS = ("table", "json", "jsonl", "csv", "md")


# ----------------------------------------------------------------------------- rows and extras per command


def _critical_evidence(results: dict[str, Any]) -> list[Any]:
    return [f"[bold]{results['verdict']}[/]", *(f"  • {escape(line)}" for line in results["evidence"])]


#: Extra Rich renderables shown under a command's table (e.g. a density chart), by command.
EXTRAS: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "spectrum": spectrum_extras,
    "classify-critical-point": _critical_evidence,
    "interpolate": interpolate_extras,
}


def rows_of(doc: dict[str, Any], result: type[Result] = Result) -> list[dict[str, Any]]:
    """The document's results as flat rows (one per eigenvalue, tensor, ...), as its command's
    result type declares them (the command registry says which; one row of every key without
    one)."""
    return table(doc["results"], result.ROWS)


# ----------------------------------------------------------------------------- formats


def _cell(value: Any) -> str:
    if value is None:
        return "–"  # a number the run does not have (JSON says null)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "×".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, allow_nan=False)


def to_jsonl(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def to_csv(doc: dict[str, Any], result: type[Result] = Result) -> str:
    rows = rows_of(doc, result)
    path = doc.get("checkpoint", {}).get("path")
    buffer = io.StringIO()
    fields = ["checkpoint", *dict.fromkeys(k for r in rows for k in r)]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"checkpoint": path, **{k: ("" if v is None else v) for k, v in row.items()}})
    return buffer.getvalue()


def to_markdown(doc: dict[str, Any], result: type[Result] = Result) -> str:
    rows = rows_of(doc, result)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"**{doc['command']}** `{doc.get('checkpoint', {}).get('path')}`", "",
             "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_cell(r.get(f)) for f in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _summary_lines(doc: dict[str, Any]) -> list[str]:
    ckpt, settings, results = doc.get("checkpoint", {}), doc.get("settings", {}), doc.get("results", {})
    curvature = f" of the {settings['curvature']}" if settings.get("curvature") else ""
    lines = [f"[bold]{doc['command']}{curvature}[/] {ckpt.get('path')}  "
             f"[dim]({ckpt.get('format')}, {ckpt.get('n_params')} params)[/]"]
    if settings:
        hvp = settings.get("hvp_strategy")  # absent where no HVP was computed
        lines.append(f"[dim]device {settings.get('device')} · {settings.get('dtype')} · "
                     f"bn {settings.get('bn')} · {settings.get('n_samples')} samples · "
                     f"{settings.get('n_analysed')} parameters analysed"
                     f"{f' · HVP {hvp}' if hvp else ''}"
                     f"{' (compiled)' if settings.get('compiled') else ''}[/]")
    if "loss" in results:
        accuracy = results.get("accuracy")
        acc = f" · accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        lines.append(f"loss {_cell(results['loss'])}{acc}")
    return lines


#: The cost line of the table view: the keys a report has, in this order.
COST_UNITS = {"hvps": " HVPs", "grads": " gradients", "data_passes": " data passes",
              "wall_s": " s analysis", "total_s": " s in all"}


def _footer_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    cost = doc.get("cost") or {}
    spent = [f"{cost[key]}{unit}" for key, unit in COST_UNITS.items() if cost.get(key) is not None]
    if spent:
        lines.append(f"[dim]{' · '.join(spent)}[/]")
    for gate in doc.get("gates", []):
        mark = "[red]FAILED[/]" if gate["violated"] else "[green]ok[/]"
        lines.append(f"gate {gate['expr']}: {_cell(gate['value'])} {mark}")
    for warning in doc.get("warnings", []):
        lines.append(f"[yellow]warning:[/] {warning}")
    return lines


def to_table(doc: dict[str, Any], color: bool, result: type[Result] = Result) -> str:
    """A Rich rendering for people at a terminal."""
    width = max(80, shutil.get_terminal_size((100, 24)).columns)
    console = Console(file=io.StringIO(), force_terminal=color, no_color=not color, emoji=False,
                      width=width, highlight=False)
    for line in _summary_lines(doc):
        console.print(line)
    rows = rows_of(doc, result)
    if rows:
        table = Table(show_edge=False, pad_edge=False)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        for field in fields:
            numeric = all(isinstance(r.get(field), (int, float)) and not isinstance(r.get(field), bool)
                          for r in rows if r.get(field) is not None)
            table.add_column(field, justify="right" if numeric else "left")
        for row in rows:
            cells = []
            for field in fields:
                text = _cell(row.get(field))
                if row.get(field) is False and field == "converged":
                    text = f"[yellow]{text}[/]"
                cells.append(text)
            table.add_row(*cells)
        console.print(table)
    extra = EXTRAS.get(doc["command"])
    if extra is not None:
        for renderable in extra(doc["results"]):
            console.print(renderable)
    for line in _footer_lines(doc):
        console.print(line)
    return console.file.getvalue()


def render(doc: dict[str, Any], fmt: str, color: bool = False,
           result: type[Result] = Result) -> str:
    """The document in ``fmt``; ``result``: its command's result type, whose rows the table,
    CSV and Markdown show."""
    if fmt == "json":
        return to_json(doc)
    if fmt == "jsonl":
        return to_jsonl(doc)
    if fmt == "csv":
        return to_csv(doc, result)
    if fmt == "md":
        return to_markdown(doc, result)
    return to_table(doc, color, result)
