"""What every analysis command shares: its options (declared once, here), the run from
checkpoint to report, streams and exit codes (DESIGN §7)."""

from __future__ import annotations

import inspect
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from landscape_cli import STARTED
from landscape_cli.config import Config, find_config, load_config
from landscape_cli.engine.hvp import NONFINITE, STRATEGIES, HVPEngine
from landscape_cli.errors import EXIT_GATE, EXIT_INTERNAL, Interrupted, LandscapeError, NumericalError
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.loading.assemble import Loaded, LoadOptions, describe_checkpoint, load
from landscape_cli.report.document import build_report
from landscape_cli.report.gates import Gate, check_names, parse_gate
from landscape_cli.report.output import Destination, destination, emit
from landscape_cli.report.render import FORMATS, render

stderr = Console(stderr=True, highlight=False)

Format = Enum("Format", {f: f for f in FORMATS}, type=str)
Strategy = Enum("Strategy", {s: s for s in STRATEGIES}, type=str)

_INPUT, _ENGINE, _OUTPUT = "Input", "Engine", "Output"


@dataclass
class OutputOptions:
    """Options every command has: the checkpoint, output format and destination, verbosity."""

    checkpoint: str
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


@dataclass
class Common(OutputOptions):
    """The shared options of an analysis command, as parsed."""

    config: Path | None = None
    set: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    bn: str | None = None
    key: str | None = None
    params: list[str] = field(default_factory=list)
    batches: int | None = None
    hvp_strategy: str | None = None
    memory_budget: str | None = None
    compile: bool | None = None
    allow_global: list[str] = field(default_factory=list)
    trust_checkpoint: bool = False
    fail_if: list[str] = field(default_factory=list)

    def flags(self) -> dict[str, tuple[str, Any]]:
        """The dedicated flags given, as config key → (the flag as typed, its value)."""
        given = {"device": ("--device", self.device), "dtype": ("--dtype", self.dtype),
                 "seed": ("--seed", self.seed), "bn": ("--bn", self.bn),
                 "checkpoint.key": ("--key", self.key),
                 "engine.strategy": ("--hvp-strategy", getattr(self.hvp_strategy, "value", None)),
                 "engine.memory_budget": ("--memory-budget", self.memory_budget),
                 "engine.compile": ("--compile" if self.compile else "--no-compile", self.compile)}
        return {key: (f"{flag} {value}" if not isinstance(value, bool) else flag, value)
                for key, (flag, value) in given.items() if value is not None}


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


CHECKPOINT = _param("checkpoint", Annotated[str, typer.Argument(
    help="Checkpoint file (.pt/.pth/.ckpt/.bin/.safetensors) or Hugging Face style folder.",
    show_default=False)], inspect.Parameter.empty)

INPUT_OPTIONS = [
    _param("config", Annotated[Path | None, typer.Option(
        "--config", "-c", help="Config YAML (default: $LANDSCAPE_CONFIG, then landscape.yaml "
        "beside the checkpoint or in a parent folder, then in the working directory).",
        rich_help_panel=_INPUT)], None),
    _param("set", Annotated[list[str], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set data.batch_size=64 "
        "(repeatable).", rich_help_panel=_INPUT)], []),
    _param("device", Annotated[str | None, typer.Option(
        help="auto | cpu | cuda | cuda:N (overrides the config).", rich_help_panel=_ENGINE)], None),
    _param("dtype", Annotated[str | None, typer.Option(
        help="float32 | float64 (overrides the config).", rich_help_panel=_ENGINE)], None),
    _param("seed", Annotated[int | None, typer.Option(
        help="Seed of every random choice (overrides the config).", rich_help_panel=_ENGINE)], None),
    _param("bn", Annotated[str | None, typer.Option(
        help="BatchNorm policy: eval (running stats) | train-stats (batch stats, buffers kept).",
        rich_help_panel=_ENGINE)], None),
    _param("key", Annotated[str | None, typer.Option(
        help="Where the weights are in the checkpoint file: a key such as model, ema or "
        "state_dict (overrides checkpoint.key; default auto).", rich_help_panel=_INPUT)], None),
    _param("params", Annotated[list[str], typer.Option(
        "--params", metavar="GLOB", help="Analyse only parameters whose name matches this glob, "
        "e.g. 'layer3.*' (repeatable).", rich_help_panel=_INPUT)], []),
    _param("batches", Annotated[int | None, typer.Option(
        min=1, help="Use only the first N batches of the data.", rich_help_panel=_INPUT)], None),
    _param("hvp_strategy", Annotated[Strategy | None, typer.Option(
        help="HVP engine strategy: auto (default) keeps the first-order graph ('cached') when it "
        "fits the memory budget, else streams batches ('stream').", rich_help_panel=_ENGINE)], None),
    _param("memory_budget", Annotated[str | None, typer.Option(
        metavar="SIZE", help="Memory the cached graph and then the SLQ bases may hold, e.g. 8GB "
        "or 512MiB (0: always stream, SLQ without bases). Default: half the GPU's memory, or "
        "40% of the RAM (what the machine has, not what is free now).",
        rich_help_panel=_ENGINE)], None),
    _param("compile", Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the streaming HVP (first call compiles; "
        "pays off over many HVPs on large models). Implies stream unless --hvp-strategy cached.",
        rich_help_panel=_ENGINE)], None),
    _param("allow_global", Annotated[list[str], typer.Option(
        "--allow-global", metavar="MODULE.NAME", help="Let weights_only unpickling accept this "
        "global (repeatable).", rich_help_panel=_INPUT)], []),
    _param("trust_checkpoint", Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Unpickle with weights_only=False: the file can run code. "
        "Only for files you trust.", rich_help_panel=_INPUT)], False),
    _param("fail_if", Annotated[list[str], typer.Option(
        "--fail-if", metavar="EXPR", help="Exit 1 if this holds, e.g. 'lambda_max>50' (repeatable).",
        rich_help_panel=_OUTPUT)], []),
]

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

COMMON_OPTIONS = [*INPUT_OPTIONS, *OUTPUT_OPTIONS]


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What an analysis function gets: the loaded problem and its engine, a progress hook, and
    the files the run reads (which no output of it may overwrite). The checkpoint, model and
    data are loaded when the function first asks for them, so that it checks its own options
    first: a bad option fails in a second, not after the loading."""

    open: Callable[[], tuple[Loaded, HVPEngine, float]]
    seed: int
    show_progress: bool
    inputs: list[Path]

    @cached_property
    def _opened(self) -> tuple[Loaded, HVPEngine, float]:
        return self.open()

    @property
    def started(self) -> float:
        """When the analysis began: after the loading (``cost.wall_s`` counts from here)."""
        return self._opened[2]

    @property
    def loaded(self) -> Loaded:
        return self._opened[0]

    @property
    def engine(self) -> HVPEngine:
        return self._opened[1]

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
        """A callback ``(completed, note)`` that drives a progress bar on stderr. ``total`` is
        a real budget (HVPs, steps per run), or None where the need is not known in advance
        (Lanczos stops at convergence): the bar then counts without pretending to a total."""
        if not self.show_progress:
            yield lambda completed, note="": None
            return
        count = MofNCompleteColumn() if total is not None else TextColumn("{task.completed}")
        columns = (TextColumn("{task.description}"), BarColumn(), count,
                   TextColumn("{task.fields[note]}"), TimeElapsedColumn())
        with Progress(*columns, console=stderr, transient=True) as bar:
            task = bar.add_task(label, total=total, note="")
            yield lambda completed, note="": bar.update(task, completed=completed, note=note)

    @contextmanager
    def converging(self, label: str, total: int | None) -> Iterator[Callable[[int, int, int], None]]:
        """``progress`` for the Krylov algorithms' callback ``(step, converged, wanted)``."""
        with self.progress(label, total) as update:
            yield lambda step, done, wanted: update(step, f"{done}/{wanted} converged")

    @contextmanager
    def partial_on_interrupt(self, so_far: SoFar) -> Iterator[None]:
        """On SIGINT/SIGTERM inside the block, attach the result so far (marked not
        converged; None if there is none yet) to the interruption, so that the report is
        still written."""
        try:
            yield
        except Interrupted as stop:
            stop.partial = so_far.value()
            raise


class Analysis(Protocol):
    """The typed result an analysis returns."""

    #: every name ``scalars`` can hold (``top_N`` for a numbered family), for early gate checks
    GATES: ClassVar[tuple[str, ...]]

    def results(self) -> dict[str, Any]:
        """The command-specific ``results`` of the JSON report."""

    def scalars(self) -> dict[str, float]:
        """Named numbers that ``--fail-if`` gates and summaries can use."""

    def warnings(self) -> list[str]:
        """What the user should know about how far to trust the numbers."""


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, LandscapeError):
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    stderr.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                 "(rerun with --debug for a traceback, and please report it)", soft_wrap=True)
    raise typer.Exit(EXIT_INTERNAL)


def finish(doc: dict[str, Any], options: OutputOptions, dest: Destination | None,
           echo_warnings: bool = True) -> None:
    """Render the document in the chosen format and write it to ``dest`` (stdout if None);
    warnings also go to stderr unless the table shows them or ``echo_warnings`` is off."""
    fmt = options.output_format()
    text = render(doc, fmt, color=fmt == "table" and options.output is None and sys.stdout.isatty())
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
        _fail(exc, options.debug)


def _inputs(common: Common, config_path: Path, config: Config) -> list[Path]:
    """The files a run reads: the checkpoint, the config and a data file."""
    return [Path(common.checkpoint), config_path,
            *([Path(config.data.path)] if config.data.path else [])]


#: Numbers every analysis report has, whatever the command.
HEADLINE = ("loss", "accuracy")


def _report(command: str, common: Common, analyse: Callable[[Run], Analysis],
            gate_names: tuple[str, ...]
            ) -> tuple[dict[str, Any], Destination | None, Interrupted | None]:
    """The report, where it goes, and the interruption if the run was stopped with a result
    so far (the report then has ``status: interrupted``)."""
    gates: list[Gate] = [parse_gate(expr) for expr in common.fail_if]
    check_names(gates, (*HEADLINE, *gate_names))
    config_path = find_config(str(common.config) if common.config else None, common.checkpoint)
    config = load_config(config_path, common.set, common.flags())
    inputs = _inputs(common, config_path, config)
    dest = common.destination(inputs)
    def open_run() -> tuple[Loaded, HVPEngine, float]:
        loaded = load(config, common.checkpoint, LoadOptions(
            params=common.params, max_batches=common.batches,
            allow_globals=common.allow_global, trust_checkpoint=common.trust_checkpoint))
        started = time.perf_counter()
        return loaded, HVPEngine(loaded.problem, strategy=config.engine.strategy,
                                 memory_budget=config.engine.memory_budget,
                                 compile=config.engine.compile), started

    run = Run(open=open_run, seed=config.seed,
              show_progress=not common.quiet and stderr.is_terminal, inputs=inputs)
    interrupted = None
    try:
        result = analyse(run)
    except FloatingPointError:
        raise NumericalError(NONFINITE) from None
    except Interrupted as stop:
        if stop.partial is None:
            raise
        result, interrupted = stop.partial, stop
    loaded, engine = run.loaded, run.engine
    loss, accuracy = engine.evaluate()
    wall = time.perf_counter() - run.started
    headline = {"loss": loss, **({"accuracy": accuracy} if accuracy is not None else {})}
    problem = loaded.problem
    return build_report(
        command,
        checkpoint=describe_checkpoint(loaded),
        settings={"device": str(problem.device), "dtype": config.dtype, "seed": config.seed,
                  "bn": config.bn, "n_samples": problem.n_samples,
                  "n_batches": len(problem.batches), "n_analysed": problem.n,
                  "params": list(common.params) or None, "config": str(config_path),
                  "config_sha256": config.sha256(), **engine.describe(),
                  **({"attention": "sdpa-math"} if problem.attention else {})},
        results={**headline, **result.results()},
        cost={**engine.cost.as_dict(), "wall_s": round(wall, 4),
              "total_s": round(time.perf_counter() - STARTED, 4)},
        gates=[gate.check({**headline, **result.scalars()}) for gate in gates],
        warnings=[*loaded.warnings, *engine.warnings, *result.warnings()],
        status="ok" if interrupted is None else "interrupted",
    ), dest, interrupted


def execute(command: str, common: Common, analyse: Callable[[Run], Analysis],
            gate_names: tuple[str, ...]) -> None:
    """Checkpoint → problem → analysis → report → output; exit code per DESIGN §7."""
    doc, dest, interrupted = guarded(common, lambda: _report(command, common, analyse, gate_names))
    # An interrupted run ends with its one line; its warnings are in the report.
    guarded(common, lambda: finish(doc, common, dest, echo_warnings=interrupted is None))
    if interrupted is not None:
        stderr.print(f"[bold red]error:[/] interrupted by {interrupted}; the report holds the "
                     "result so far (status: interrupted)", soft_wrap=True)
        raise typer.Exit(interrupted.exit_code)
    if any(row["violated"] for row in doc["gates"]):
        raise typer.Exit(EXIT_GATE)


def refuse_non_finite(options: dict[str, Any]) -> None:
    """``inf`` and ``nan`` parse as floats; no option of this tool means either."""
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"{value}: must be a finite number",
                                     param_hint=f"'--{name.replace('_', '-')}'")


def register(app: typer.Typer, name: str, *, help: str, epilog: str,
             shared: list[inspect.Parameter], run: Callable[[dict[str, Any], Callable, Any], None]
             ) -> Callable:
    """Register ``fn(first, **own_options) -> Result`` as ``landscape NAME``, with the ``shared``
    parameters added to its signature; ``run(shared_values, call, Result)`` runs it."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(signature.parameters.values())[1:]]
        params = [shared[0], *own, *shared[1:]]
        names = {p.name for p in shared}

        def command(**kwargs: Any) -> None:
            refuse_non_finite(kwargs)
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            run(values, lambda first: fn(first, **kwargs), signature.return_annotation)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = fn.__doc__
        app.command(name, help=help, epilog=epilog)(command)
        return fn

    return decorate


def analysis_command(app: typer.Typer, name: str, *, help: str, epilog: str) -> Callable:
    """Register ``fn(run, **own_options) -> Analysis`` as ``landscape NAME CHECKPOINT`` with
    every shared option; it runs through ``execute``."""
    return register(app, name, help=help, epilog=epilog, shared=[CHECKPOINT, *COMMON_OPTIONS],
                    run=lambda values, call, result: execute(name, Common(**values), call,
                                                             result.GATES))
