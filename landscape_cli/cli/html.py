"""``landscape report FILES... -o report.html``: one self-contained page of reports and sweeps."""

from __future__ import annotations

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
            from landscape_cli.sweep.flat import read_documents

            dest = destination(output, "-o", files)
            text = page([(path, *read_documents(path)) for path in files])
            write_file(dest, lambda path: path.write_text(text, encoding="utf-8"))
        except LandscapeError as exc:
            fail(exc)
