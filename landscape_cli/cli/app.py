"""The ``landscape`` Typer application."""

from __future__ import annotations

from typing import Annotated

import typer

from landscape_cli import __version__
from landscape_cli.cli import critical as critical_cli
from landscape_cli.cli import inspect as inspect_cli
from landscape_cli.cli import schema as schema_cli
from landscape_cli.cli import spectrum as spectrum_cli
from landscape_cli.cli import trace as trace_cli
from landscape_cli.cli.common import analysis_command

app = typer.Typer(
    name="landscape",
    help="Loss-landscape geometry of saved PyTorch checkpoints: Hessian spectrum, trace, "
         "sharpness, mode connectivity and critical points.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"landscape {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """Loss-landscape geometry of saved PyTorch checkpoints."""


analysis_command(app, "spectrum", help=spectrum_cli.HELP, epilog=spectrum_cli.EPILOG)(
    spectrum_cli.spectrum_command)
analysis_command(app, "trace", help=trace_cli.HELP, epilog=trace_cli.EPILOG)(trace_cli.trace_command)
analysis_command(app, "classify-critical-point", help=critical_cli.HELP,
                 epilog=critical_cli.EPILOG)(critical_cli.classify_command)
inspect_cli.register_inspect(app)
schema_cli.register_schema(app)


def main() -> None:
    app(prog_name="landscape")
