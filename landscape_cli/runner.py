"""The runner (DESIGN §1): from a command, a checkpoint, a config and options to the typed
report. Used by the CLI, by the Python API (``landscape_cli.analyze``) and by sweeps, which
pass one ``Session`` so that the model and data are built once for many checkpoints.

``prepare`` does everything that can fail before any loading (options, gates, config, the
run's input files), so that a bad option fails in a second; ``execute`` runs the analysis and
builds the report, timed from the start of ``prepare``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from landscape_cli.commands import COMMANDS, Command
from landscape_cli.commands.context import ProgressFactory, Run, no_progress
from landscape_cli.config import Config, find_config, load_config, resolve_device
from landscape_cli.engine import distributed, peak_memory
from landscape_cli.engine.hvp import NONFINITE
from landscape_cli.errors import Interrupted, LandscapeError, NumericalError, OutOfMemory
from landscape_cli.loading.assemble import LoadOptions
from landscape_cli.loading.checkpoint import Checkpoint
from landscape_cli.names import AUTO, FD, FSDP, HESSIAN
from landscape_cli.options import RunOptions, checked, jsonable
from landscape_cli.paths import expand
from landscape_cli.report.document import Report, build_report
from landscape_cli.report.gates import Gate, check_names, parse_gate
from landscape_cli.session import Session

#: Numbers every analysis report has, whatever the command.
HEADLINE = ("loss", "accuracy")


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


@dataclass
class Prepared:
    """A run checked and ready: everything but the loading and the analysis."""

    command: Command
    checkpoints: list[str]
    run_options: RunOptions
    options: dict[str, Any]
    gates: list[Gate]
    config: Config
    config_path: Path
    started: float
    inputs: list[Path] = field(default_factory=list)

    def load_options(self) -> LoadOptions:
        o = self.run_options
        return LoadOptions(params=o.params, max_batches=o.batches, allow_globals=o.allow_global,
                           trust_checkpoint=o.trust_checkpoint, optimizer=o.optimizer,
                           **({"dist_timeout": o.dist_timeout} if o.dist_timeout else {}))


def command(name: str) -> Command:
    if name not in COMMANDS:
        raise LandscapeError(f"no command named '{name}' (the commands: {', '.join(COMMANDS)})")
    return COMMANDS[name]


def _config(path: Path, overrides: tuple[str, ...], flags: tuple) -> Config:
    """``load_config``, read again only when the file changed (a sweep prepares one run per
    checkpoint, mostly with one config)."""
    stat = path.stat()
    return _read_config(path, stat.st_mtime_ns, stat.st_size, overrides, flags)


@functools.lru_cache(maxsize=32)
def _read_config(path: Path, mtime_ns: int, size: int, overrides: tuple[str, ...],
                 flags: tuple) -> Config:
    return load_config(path, list(overrides), dict(flags))


def prepare(name: str, checkpoint: str | Path | Checkpoint | Sequence[str | Path], run_options: RunOptions,
            options: dict[str, Any], *, config: Config | None = None) -> Prepared:
    """Check the options and gates, find and load the config (by the first checkpoint; or
    ``config``, given), list the run's input files. A ``Checkpoint`` is one held in memory (a
    live model's weights: ``integrations/live.py``)."""
    started = time.perf_counter()
    spec = command(name)
    if isinstance(checkpoint, (str, Path, Checkpoint)):
        checkpoints: list[Any] = [checkpoint if isinstance(checkpoint, Checkpoint) else str(checkpoint)]
    else:
        checkpoints = [str(c) for c in checkpoint]
    if spec.many:
        checkpoints = [found for given in checkpoints for found in expand(given)]
    if not checkpoints:
        raise LandscapeError(f"{name}: no checkpoint given")
    if len(checkpoints) > 1 and not spec.many:
        raise LandscapeError(f"{name} analyses one checkpoint at a time; got {len(checkpoints)} "
                             "(landscape batch sweeps several)")
    values = checked(spec.run, options)
    gates = [parse_gate(expr) for expr in run_options.fail_if]
    check_names(gates, (*HEADLINE, *spec.result.GATES))
    if config is None:
        config_path = find_config(str(run_options.config) if run_options.config else None, checkpoints[0])
        config = _config(config_path, tuple(run_options.set), tuple(sorted(run_options.flags().items())))
    else:
        config_path = Path(config.source)
    if config.engine.shard == FSDP:
        refusal = _unsharded(spec, values, run_options, config)
        if refusal is not None:
            raise LandscapeError(f"--shard-model (engine.shard: fsdp): {refusal}")
    data = [Path(d.path) for d in (config.data, config.eval_data) if d is not None and d.path]
    inputs = [*(Path(c) for c in checkpoints if isinstance(c, str)), config_path, *data,
              *([run_options.optimizer] if run_options.optimizer else [])]
    return Prepared(spec, checkpoints, run_options, values, gates, config, config_path,
                    started, inputs)


def _unsharded(spec: Command, values: dict[str, Any], run_options: RunOptions,
               config: Config) -> str | None:
    """Why this run cannot go on a sharded model (None: it can): outside torchrun, with a
    subset of the parameters, exact or compiled products, or options of the command that need
    whole vectors (its ``sharded``)."""
    if not distributed.launched():
        return ("it shards the model over the ranks of a torchrun launch; run it under "
                "torchrun --nproc-per-node N -m landscape_cli ...")
    if run_options.params:
        return "it analyses every parameter; leave out --params"
    if config.engine.strategy not in (AUTO, FD):
        return (f"its products are finite differences (FSDP2 has no double backward); "
                f"--hvp-strategy {config.engine.strategy} does not apply, use fd or auto")
    if config.engine.compile:
        return "--compile does not apply to its finite-difference products"
    if spec.sharded is None:
        return f"{spec.name} does not run on a sharded model (spectrum, trace and sharpness do)"
    return spec.sharded(values)


def execute(prepared: Prepared, *, session: Session | None = None,
            progress: ProgressFactory = no_progress,
            notify: Callable[[str], None] = lambda text: None) -> tuple[Report, Interrupted | None]:
    """Run the analysis and build the report; with the interruption when the run was stopped
    with a result so far (the report then has ``status: interrupted``). ``session``: one whose
    config is ``prepared.config``, to load the checkpoint onto its model."""
    session = session or Session(prepared.config, prepared.load_options())
    peak_memory.start(resolve_device(prepared.config.device))
    run = Run(session, prepared.checkpoints, prepared.config, prepared.inputs, progress, notify)
    interrupted = None
    try:
        result = prepared.command.run(run, **prepared.options)
    except FloatingPointError:
        raise NumericalError(NONFINITE) from None
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = OutOfMemory.of(exc)
        if error is None:
            raise
        raise error from None
    except Interrupted as stop:
        if stop.partial is None:
            raise
        result, interrupted = stop.partial, stop
    report = _report(prepared, run, result, interrupted)
    distributed.barrier()
    return report, interrupted


def _report(prepared: Prepared, run: Run, result: Analysis, interrupted: Interrupted | None) -> Report:
    config, loaded = prepared.config, run.loaded
    loss, accuracy = run.evaluation()
    wall = time.perf_counter() - run.started
    headline = {"loss": loss, **({"accuracy": accuracy} if accuracy is not None else {})}
    problem = loaded.problem
    engine = run.__dict__.get("engine")
    doc = build_report(
        prepared.command.name,
        checkpoint=loaded.describe(),
        settings={"device": str(problem.device), "dtype": config.dtype,
                  "precision": config.precision, "seed": config.seed,
                  "bn": config.bn, "n_samples": problem.n_samples,
                  "n_batches": len(problem.batches), "n_analysed": problem.n,
                  "params": list(prepared.run_options.params) or None,
                  "config": str(prepared.config_path), "config_sha256": config.sha256(),
                  "options": {name: jsonable(value) for name, value in prepared.options.items()},
                  "world_size": distributed.world_size(),
                  **({"curvature": run.curvature} if run.curvature != HESSIAN else {}),
                  **({"shard": config.engine.shard} if config.engine.shard == FSDP else {}),
                  # the same threads give the same numbers; others, the same within their errors
                  "threads": torch.get_num_threads(),
                  **({"data_streamed": True} if problem.streamed else {}),
                  **(engine.describe() if engine is not None else {}),
                  **({"attention": problem.objective.attention_kernels} if problem.attention else {})},
        results={**headline, **result.results()},
        cost={**run.passes.cost.as_dict(), **_peak_memory(problem.device), "wall_s": round(wall, 4),
              "total_s": round(time.perf_counter() - prepared.started, 4)},
        gates=[gate.check({**headline, **result.scalars()}) for gate in prepared.gates],
        warnings=[*loaded.warnings, *run.passes.warnings, *result.warnings()],
        status="ok" if interrupted is None else "interrupted",
    )
    return Report.of(doc, result)


def _peak_memory(device: torch.device) -> dict[str, int]:
    """This process's peak memory (``engine/peak_memory.py``); under torchrun, where rank 0
    writes its own, also the largest of every rank's."""
    peak = peak_memory.peak_bytes(device)
    return {"peak_memory_bytes": peak,
            **({"peak_memory_bytes_max_over_ranks": distributed.all_max(peak)}
               if distributed.active() else {})}


def analyze(name: str, checkpoint: str | Path, config: str | Path | None = None, *,
            session: Session | None = None, progress: ProgressFactory = no_progress,
            **options: Any) -> Report:
    """Run ``landscape NAME CHECKPOINT`` in this process and return its report (DESIGN §10).

    ``options`` are the command's own (``top=5``) and the shared ones (``set=[...]``,
    ``dtype="float64"``, ``fail_if=[...]``, ...), by their Python names; errors raise the
    ``LandscapeError`` whose message the CLI prints."""
    shared = {k: options.pop(k) for k in list(options) if k in RunOptions.__dataclass_fields__}
    prepared = prepare(name, checkpoint, RunOptions.of({**shared, "config": config}), options)
    report, interrupted = execute(prepared, session=session, progress=progress)
    if interrupted is not None:
        raise interrupted
    return report

