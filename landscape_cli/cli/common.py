"""What every command's CLI shares: options as Typer parameters (turned from their one
declaration in ``landscape_cli.options``), the progress bar, output and exit codes (DESIGN §7).
A thin layer over the runner, which it imports only when a command runs: ``--help`` never
imports torch."""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from landscape_cli.cli.signals import importing
from landscape_cli.commands import Command, result_types
from landscape_cli.errors import EXIT_GATE, EXIT_INTERNAL, LandscapeError, describe
from landscape_cli.options import Option, RunOptions, declared, flag, run_option_types
from landscape_cli.report.output import Destination, destination, emit
from landscape_cli.report.render import FORMATS, render

stderr = Console(stderr=True, highlight=False, emoji=False)  # ":x:" in a name stays as it is

Format = Enum("Format", {f: f for f in FORMATS}, type=str)

_OUTPUT = "Output"


@dataclass
class OutputOptions:
    """Options every command has: the checkpoint, output format and destination, verbosity."""

    checkpoint: str | list[str]
    format: str | None = None
    json: bool = False
    output: Path | None = None
    quiet: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        if self.output is not None and str(self.output) == "-":
            self.output = None  # `-o -` is stdout

    def destination(self, inputs: list[Path]) -> Destination | None:
        """Where the report goes, checked against the run's ``inputs`` before any work."""
        return None if self.output is None else destination(self.output, "-o", inputs)

    def output_format(self) -> str:
        if self.json:
            return "json"
        if self.format:
            return self.format
        return "table" if self.output is None and sys.stdout.isatty() else "json"


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def typer_parameter(name: str, kind: Any, option: Option, default: Any) -> inspect.Parameter:
    """A declared option as a Typer parameter. Ranges are not given to Typer: the runner
    checks them, with the same message for the CLI and the API."""
    if option.choices:
        choice = Enum(name.title().replace("_", ""), {c: c for c in option.choices}, type=str)
        kind = choice | None if default is None else choice
        default = None if default is None else choice(default)
    spec = typer.Option(*(option.flags or (flag(name),)), help=option.help, metavar=option.metavar,
                        rich_help_panel=option.panel)
    return _param(name, Annotated[kind, spec], default)


CHECKPOINT = _param("checkpoint", Annotated[str, typer.Argument(
    help="Checkpoint file (.pt/.pth/.ckpt/.bin/.safetensors) or Hugging Face style folder.",
    show_default=False)], inspect.Parameter.empty)
CHECKPOINTS = _param("checkpoint", Annotated[list[str], typer.Argument(
    help="Checkpoints (files or folders; a quoted glob such as 'runs/*.pt' is expanded, in "
    "natural order): the first is A, the second B.", show_default=False)], inspect.Parameter.empty)

OUTPUT_OPTIONS = [
    _param("format", Annotated[Format | None, typer.Option(
        "--format", "-f", help="Output format (default: table in a terminal, else json).",
        rich_help_panel=_OUTPUT)], None),
    _param("json", Annotated[bool, typer.Option(
        "--json", help="Same as --format json.", rich_help_panel=_OUTPUT)], False),
    _param("output", Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the result to this file (atomically) instead of stdout.",
        rich_help_panel=_OUTPUT)], None),
    _param("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bars or warnings on stderr.", rich_help_panel=_OUTPUT)],
        False),
    _param("debug", Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks for errors.", rich_help_panel=_OUTPUT)], False),
]


@contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
    """A callback ``(completed, note)`` that drives a progress bar on stderr. ``total`` is a
    real budget (HVPs, steps per run), or None where the need is not known in advance: the
    bar then counts without pretending to a total."""
    count = MofNCompleteColumn() if total is not None else TextColumn("{task.completed}")
    columns = (TextColumn("{task.description}"), BarColumn(), count,
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(label, total=total, note="")
        yield lambda completed, note="": bar.update(task, completed=completed, note=note)


def fail(exc: Exception, debug: bool = False) -> NoReturn:
    """End the command on ``exc``: its one line (``errors.describe``) and exit code; with
    ``debug``, its traceback first."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, LandscapeError):
        stderr.print(f"[bold red]error:[/] {escape(describe(exc))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    stderr.print(f"[bold red]{escape(describe(exc))}[/] (rerun with --debug for a traceback, and "
                 "please report it)", soft_wrap=True)
    raise typer.Exit(EXIT_INTERNAL)


def finish(doc: dict[str, Any], options: OutputOptions, dest: Destination | None,
           echo_warnings: bool = True) -> None:
    """Render the document in the chosen format and write it to ``dest`` (stdout if None);
    warnings also go to stderr unless the table shows them or ``echo_warnings`` is off."""
    fmt = options.output_format()
    text = render(doc, fmt, color=fmt == "table" and options.output is None and sys.stdout.isatty(),
                  result=result_types()[doc["command"]])
    if echo_warnings and not options.quiet and not (fmt == "table" and options.output is None):
        for warning in doc.get("warnings", []):
            stderr.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    emit(text, dest)


def guarded(options: OutputOptions, body: Callable[[], Any]) -> Any:
    """Run ``body``; any failure becomes one line on stderr and its exit code."""
    try:
        return body()
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        fail(exc, options.debug)


def run_analysis(name: str, output: OutputOptions, shared: dict[str, Any],
                 options: dict[str, Any]) -> None:
    """Options → runner → report → output; exit code per DESIGN §7."""

    lead = True  # under torchrun, rank 0 alone writes the report, progress and warnings

    def report() -> tuple[dict[str, Any], Destination | None, Any]:
        nonlocal lead
        with importing():
            from landscape_cli import runner
            from landscape_cli.engine import distributed

        lead = distributed.rank() == 0
        prepared = runner.prepare(name, output.checkpoint, RunOptions.of(shared), options)
        dest = output.destination(prepared.inputs) if lead else None
        show = lead and not output.quiet and stderr.is_terminal
        done, interrupted = runner.execute(
            prepared, progress=progress_bar if show else runner.no_progress,
            notify=lambda text: stderr.print(f"note: {escape(text)}", soft_wrap=True)
            if lead and not output.quiet else None)
        return done.to_dict(), dest, interrupted

    doc, dest, interrupted = guarded(output, report)
    if not lead:
        raise typer.Exit(EXIT_GATE if any(row["violated"] for row in doc["gates"]) else 0)
    # An interrupted run ends with its one line; its warnings are in the report.
    guarded(output, lambda: finish(doc, output, dest, echo_warnings=interrupted is None))
    if interrupted is not None:
        stderr.print(f"[bold red]error:[/] interrupted by {interrupted}; the report holds the "
                     "result so far (status: interrupted)", soft_wrap=True)
        raise typer.Exit(interrupted.exit_code)
    if any(row["violated"] for row in doc["gates"]):
        raise typer.Exit(EXIT_GATE)


def register(app: typer.Typer, name: str, *, help: str, epilog: str,
             params: list[inspect.Parameter], run: Callable[..., None]) -> None:
    """``landscape NAME`` with ``params``; ``run(**values)`` runs it."""

    def command(**kwargs: Any) -> None:
        run(**kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    app.command(name, help=help, epilog=epilog)(command)


def analysis_command(app: typer.Typer, spec: Command) -> None:
    """``landscape NAME CHECKPOINT`` with the command's own options, then the shared ones."""
    own = [typer_parameter(name, *declared_) for name, declared_ in declared(spec.run).items()]
    shared = [typer_parameter(name, *declared_) for name, declared_ in run_option_types().items()]
    output_names = {p.name for p in OUTPUT_OPTIONS}
    shared_names = {p.name for p in shared}

    def run(**values: Any) -> None:
        output = OutputOptions(checkpoint=values.pop("checkpoint"),
                               **{k: values.pop(k) for k in output_names})
        run_analysis(spec.name, output, {k: values.pop(k) for k in shared_names}, values)

    register(app, spec.name, help=spec.help, epilog=spec.epilog,
             params=[CHECKPOINTS if spec.many else CHECKPOINT, *own, *shared, *OUTPUT_OPTIONS],
             run=run)


def command_parser(spec: Command) -> typer.core.TyperCommand:
    """``landscape NAME``'s parser alone (``batch`` reads the options of its command with it)."""
    app = typer.Typer()
    analysis_command(app, spec)
    return typer.main.get_command(app)
