"""``landscape report FILES... -o report.html``: one self-contained page of reports and sweeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from landscape_cli.cli.common import fail
from landscape_cli.errors import LandscapeError

HELP = ("One self-contained HTML page (inline SVG, no external URL) from JSON reports and batch "
        "JSONL: trends with the stability edge, densities, curves, planes, barrier matrices, "
        "per-block spectra, and tables of every number with its error. Needs matplotlib.")
EPILOG = """Examples:

  landscape report sweep.jsonl spectrum.json plane.json -o report.html
"""


def read_sources(files: list[Path]) -> list[tuple[Path, list[dict], bool]]:
    """Each file's documents: one JSON report, or one per line (a batch file)."""
    sources = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LandscapeError(f"{path}: cannot be read ({type(exc).__name__})") from None
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            sources.append((path, [whole], False))
            continue
        docs = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise LandscapeError(f"{path}:{number}: not a JSON report or batch line") from None
                if not isinstance(doc, dict) or "command" not in doc:
                    raise LandscapeError(f"{path}:{number}: not a landscape report")
                docs.append(doc)
        if not docs:
            raise LandscapeError(f"{path}: holds no report")
        sources.append((path, docs, True))
    return sources


def register_report(app: typer.Typer) -> None:
    @app.command("report", help=HELP, epilog=EPILOG)
    def report_command(
        files: Annotated[list[Path], typer.Argument(help="JSON reports (--json) and batch JSONL files.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="The page to write (.html).")],
    ) -> None:
        try:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise LandscapeError("landscape report draws with matplotlib, which is not "
                                     "installed: pip install 'landscape-cli[plot]'") from None
            from landscape_cli.html_report import page
            from landscape_cli.report.output import destination, write_file

            dest = destination(output, "-o", files)
            text = page(read_sources(files))
            write_file(dest, lambda path: path.write_text(text, encoding="utf-8"))
        except LandscapeError as exc:
            fail(exc)
