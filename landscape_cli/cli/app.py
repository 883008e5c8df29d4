"""The ``landscape`` Typer application."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer ≥ 0.22 carries its own copy of click; earlier versions use click itself
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click

from landscape_cli import __version__
from landscape_cli.cli import html as html_cli
from landscape_cli.cli import inspect as inspect_cli
from landscape_cli.cli import schema as schema_cli
from landscape_cli.cli import sweep as sweep_cli
from landscape_cli.cli.common import analysis_command
from landscape_cli.commands import COMMANDS
from landscape_cli.errors import EXIT_BAD_INPUT


class OneLineErrors(TyperGroup):
    """Usage errors (a bad option, a missing argument) as one ``error:`` line with a ``--help``
    hint and exit 2, as for any other bad input (DESIGN §7), instead of Typer's framed box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            code = 0
        except click.exceptions.ClickException as exc:
            message = " ".join(exc.format_message().split())
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "landscape"
            click.echo(f"error: {message} (see '{where} --help')", err=True)
            code = EXIT_BAD_INPUT
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata  # 60 ms: only here

        # the installed torch's version, read without importing it (seconds)
        typer.echo(f"landscape {__version__} (torch {metadata.version('torch')})")
        raise typer.Exit()


def _root(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """Loss-landscape geometry of saved PyTorch checkpoints."""


def build_app() -> typer.Typer:
    """``landscape``: a subcommand for each command of the registry, then batch, inspect, report
    and schema."""
    app = typer.Typer(
        cls=OneLineErrors,
        name="landscape",
        help="Loss-landscape geometry of saved PyTorch checkpoints: Hessian eigen-spectrum and "
             "density, trace, sharpness measures, and whether a checkpoint sits at a minimum, a "
             "saddle or a maximum.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for spec in COMMANDS.values():
        analysis_command(app, spec)
    sweep_cli.register_batch(app)
    inspect_cli.register_inspect(app)
    html_cli.register_report(app)
    schema_cli.register_schema(app)
    return app


app = build_app()
