"""Measuring a model while it trains (DESIGN §11): one command of the runner on the live model,
its current weights as a checkpoint held in memory, a fixed probe set, and the live optimizer's
state for the measures that read one. Framework-free: ``lightning.py`` and ``transformers.py``
say when to run and where the numbers go.

Training is left untouched, bit for bit: the analysis runs on a copy of the model (its weights,
buffers and modes; the trainer and other objects it refers to are not copied), reads the
optimizer's state without writing it, never touches a gradient, and puts back the RNG states
of torch (CPU and every CUDA device), numpy and ``random`` it found.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape_cli import runner
from landscape_cli.config import Config, DataSection, ModelSection, load_config
from landscape_cli.errors import LandscapeError
from landscape_cli.loading.assemble import LoadOptions
from landscape_cli.loading.checkpoint import Checkpoint
from landscape_cli.loading.data import held_batches
from landscape_cli.loading.optimizer_state import live_optimizer_state
from landscape_cli.options import RunOptions, checked
from landscape_cli.report.document import Report
from landscape_cli.report.render import to_jsonl
from landscape_cli.session import Given, Session

#: where a live analysis says its model and data came from (settings.config)
LIVE_SOURCE = "<live model>"
#: the prefix of every scalar sent to a trainer's loggers
PREFIX = "landscape/"


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Put back the RNG states of torch (CPU, every CUDA device), numpy and ``random``."""
    states = [torch.get_rng_state(), random.getstate()]
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        import numpy
        numpy_state = numpy.random.get_state()
    except ImportError:  # numpy is a dependency, but the state is only put back where it is
        numpy, numpy_state = None, None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def model_copy(model: nn.Module, shared: Iterable[object] = ()) -> nn.Module:
    """A deep copy of the model's modules, parameters and buffers; the objects in ``shared``
    (a trainer the module refers to) become None in the copy instead of being copied."""
    memo: dict[int, Any] = {id(obj): None for obj in shared if obj is not None}
    with torch.no_grad():
        return copy.deepcopy(model, memo)


def _analysis_dtype(model: nn.Module) -> str:
    """float64 for a float64 model, else float32 (bf16 and float16 weights are analysed in
    float32, as a mixed-precision run keeps its master weights)."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return "float64" if first is not None and first.dtype == torch.float64 else "float32"


def live_config(model: nn.Module, config: str | Path | None) -> Config:
    """The config a live analysis runs under: the given one (its model factory and, where a
    probe is given, its data left unused), or one that says where the model and data came
    from, on the model's device, in its dtype."""
    if config is not None:
        return load_config(Path(config))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return Config(model=ModelSection(factory=LIVE_SOURCE), data=DataSection(factory="<probe>"),
                  device=str(device), dtype=_analysis_dtype(model), source=LIVE_SOURCE)


@dataclass
class LiveAnalysis:
    """``command`` with its ``options`` (Python names, as ``landscape_cli.analyze`` takes
    them) on a live model: ``probe`` a DataLoader (or the config's data), ``loss`` a
    ``criterion(outputs, targets)`` or ``fn(model, batch)`` (default: the framework's), each
    report appended to ``output`` (JSONL) as a batch line."""

    command: str
    probe: Iterable[Any] | None = None
    loss: Callable[..., Any] | None = None
    config: str | Path | None = None
    output: str | Path | None = None
    max_hvps: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: how many batches of the probe are held (all, by default)
    probe_batches: int | None = None

    def __post_init__(self) -> None:
        if self.probe is None and self.config is None:
            raise LandscapeError("LandscapeCallback: give probe= (a DataLoader of the batches to "
                                 "measure on) or config= (a landscape config whose data to use)")
        self.shared = {k: self.options.pop(k) for k in list(self.options)
                       if k in RunOptions.__dataclass_fields__}
        if self.max_hvps is not None:
            self.options["max_hvps"] = self.max_hvps
        checked(runner.command(self.command).run, self.options)  # a bad option fails at once
        self._batches = None

    def loss_fn(self, default: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Any]:
        """``fn(model, batch)``: the given loss, else ``default``. A criterion (an ``nn.Module``
        loss such as ``nn.MSELoss()``, or a ``torch.nn.functional`` one) takes the model's
        outputs on the batch's inputs and its targets; any other callable is ``fn(model, batch)``."""
        if self.loss is None:
            return default
        from landscape_cli.engine.problem import criterion_loss

        criterion = isinstance(self.loss, nn.Module) or getattr(self.loss, "__module__", "") == (
            "torch.nn.functional")
        return criterion_loss(self.loss) if criterion else self.loss

    def measure(self, model: nn.Module, *, step: int, epoch: float | None = None,
                optimizer: torch.optim.Optimizer | None = None, default_loss: Callable[..., Any],
                shared: Iterable[object] = ()) -> Report:
        """The report of the command on ``model`` as it is now (``step``, ``epoch``: its place in
        training), the live ``optimizer``'s state for the measures that read one; appended to
        ``output``. Training is left as it was."""
        # a hook may run under the trainer's no_grad or inference_mode (validation's end)
        with rng_kept(), torch.inference_mode(False), torch.enable_grad():
            copied = model_copy(model, shared)
            config = live_config(copied, self.config)
            if self._batches is None and self.probe is not None:
                self._batches = held_batches(self.probe, "the probe set", self.probe_batches)
            checkpoint = Checkpoint(
                path=Path(f"live:step={step}"), format="live",
                tensors={k: v.detach() for k, v in copied.state_dict().items()},
                metadata={"global_step": step, **({"epoch": epoch} if epoch is not None else {})},
                optimizer=None if optimizer is None else functools.partial(live_optimizer_state,
                                                                           optimizer, model))
            given = Given(model=copied, batches=self._batches, loss_fn=self.loss_fn(default_loss))
            run_options = RunOptions.of(self.shared)
            prepared = runner.prepare(self.command, checkpoint, run_options, dict(self.options),
                                      config=config)
            session = Session(prepared.config, LoadOptions(), given=given)
            report, _ = runner.execute(prepared, session=session)
        if self.output is not None:
            with open(self.output, "a", encoding="utf-8") as out:
                out.write(to_jsonl({**report.to_dict(), "batch_key": None}) + "\n")
        return report


class LiveCallback:
    """What both frameworks' ``LandscapeCallback`` share: the analysis, when it is due, and the
    reports so far (``reports``)."""

    def __init__(self, command: str, *, every_n_steps: int | None = None,
                 on_validation_end: bool = False, probe: Iterable[Any] | None = None,
                 loss: Callable[..., Any] | None = None, config: str | Path | None = None,
                 output: str | Path | None = None, max_hvps: int | None = None, **options: Any):
        self.analysis = LiveAnalysis(command, probe=probe, loss=loss, config=config, output=output,
                                     max_hvps=max_hvps, options=options)
        self.every_n_steps, self.at_validation_end = every_n_steps, on_validation_end
        self.reports: list[Report] = []
        self._last_step = -1

    def due(self, step: int) -> bool:
        """Whether ``every_n_steps`` asks for a measurement after optimizer step ``step``."""
        n = self.every_n_steps
        return bool(n) and step > 0 and step % n == 0

    def first_at(self, step: int) -> bool:
        """Whether nothing was measured at ``step`` yet (one measurement a step, however many
        hooks fire in it); marks it measured."""
        first, self._last_step = step != self._last_step, step
        return first


def scalars(report: Report) -> dict[str, float]:
    """The report's named numbers (the loss, the accuracy, the result's gate names), as a
    trainer's loggers take them: ``landscape/NAME``."""
    headline = {k: report.results[k] for k in ("loss", "accuracy") if report.results.get(k) is not None}
    return {PREFIX + name: float(value) for name, value in {**headline, **report.result.scalars()}.items()}
