"""A sweep's numbers sent to an experiment tracker (``batch --log KIND:TARGET``): each
checkpoint's scalar results at its training step (``global_step``, ``epoch`` or the number in
its name, as the trend orders them), under ``landscape/NAME``. Each tracker is an optional
extra, imported only when asked for."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError, exception_line
from landscape_cli.integrations.live import PREFIX
from landscape_cli.sweep.flat import row_of

#: kind → (the module it needs, the extra that installs it, what TARGET is)
KINDS = {"tensorboard": ("tensorboard", "tensorboard", "DIR"), "mlflow": ("mlflow", "mlflow", "URI"),
         "wandb": ("wandb", "wandb", "PROJECT")}
#: a row's columns that say where it is, not what was measured
_PLACE = {"source", "command", "status", "checkpoint", "global_step", "epoch", "step", "error"}


@dataclass(frozen=True)
class Tracker:
    """``--log KIND:TARGET``, checked: a known kind whose package is installed."""

    kind: str
    target: str

    @classmethod
    def parse(cls, spec: str) -> Tracker:
        kind, sep, target = spec.partition(":")
        if kind not in KINDS or not sep or not target:
            raise LandscapeError(f"--log {spec}: expected " + " | ".join(
                f"{k}:{t}" for k, (_, _, t) in KINDS.items()))
        module, extra, _ = KINDS[kind]
        if importlib.util.find_spec(module) is None:
            raise LandscapeError(f"--log {spec}: {module} is not installed "
                                 f"(pip install landscape-cli[{extra}])")
        return cls(kind, target)

    def send(self, lines: Iterable[dict[str, Any]]) -> None:
        """Every finished line's numbers at its step (lines in training order)."""
        points = list(_points(lines))
        if not points:
            return
        try:
            getattr(self, f"_{self.kind}")(points)
        except Exception as exc:  # the tracker's own errors (a URI it refuses, a server away)
            raise LandscapeError(f"--log {self.kind}:{self.target}: {exception_line(exc)[:300]}") from None

    def _tensorboard(self, points: list[tuple[int, dict[str, float]]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(Path(self.target))) as writer:
            for step, values in points:
                for name, value in values.items():
                    writer.add_scalar(name, value, global_step=step)

    def _mlflow(self, points: list[tuple[int, dict[str, float]]]) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.target)
        with mlflow.start_run(run_name="landscape batch"):
            for step, values in points:
                mlflow.log_metrics(values, step=step)

    def _wandb(self, points: list[tuple[int, dict[str, float]]]) -> None:
        import wandb

        run = wandb.init(project=self.target, job_type="landscape-batch", reinit="finish_previous")
        try:
            for step, values in points:
                run.log(values, step=step)
        finally:
            run.finish()


def _points(lines: Iterable[dict[str, Any]]) -> Iterable[tuple[int, dict[str, float]]]:
    """(step, {landscape/NAME: number}) of each line with results, steps increasing (a line
    without a step takes the next one after the last)."""
    last = -1
    for line in lines:
        if line.get("status") not in ("ok", "interrupted"):
            continue
        row = row_of(line, Path(""))
        step = int(row["step"]) if row["step"] is not None and row["step"] > last else last + 1
        last = step
        values = {PREFIX + k: float(v) for k, v in row.items()
                  if k not in _PLACE and not k.startswith("cost.") and isinstance(v, (int, float))
                  and not isinstance(v, bool) and v == v}
        yield step, values
