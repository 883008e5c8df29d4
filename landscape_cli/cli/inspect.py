"""``landscape inspect``: a checkpoint's format, tensors and safety, no model code run."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated

import typer

from landscape_cli.cli.common import (
    CHECKPOINT,
    OUTPUT_OPTIONS,
    OutputOptions,
    finish,
    guarded,
    register,
)
from landscape_cli.cli.signals import importing
from landscape_cli.commands import INSPECT
from landscape_cli.report.output import Destination

HELP = "Show a checkpoint's format, tensors, shapes, dtypes, prefix and unsafe globals."
EPILOG = """Examples:

  landscape inspect sample_checkpoints/cnn_bn/final.pt

  landscape inspect runs/last.ckpt --key ema --json
"""


def inspect_checkpoint_cli(checkpoint: str, key: str = "auto", **output: object) -> None:
    """Read the checkpoint with weights_only=True (or only list its globals if that would
    refuse it) and report what it holds."""
    options = OutputOptions(checkpoint=checkpoint, **output)

    def body() -> tuple[dict, Destination | None]:
        with importing():
            from landscape_cli.analyses.inspect import inspect_checkpoint
            from landscape_cli.report.document import build_report

        started = time.perf_counter()
        dest = options.destination([Path(options.checkpoint)])
        result = inspect_checkpoint(options.checkpoint, key)
        return build_report(
            INSPECT,
            checkpoint={"path": options.checkpoint, "format": result.format,
                        "n_params": result.n_params},
            settings={}, results=result.results(),
            cost={"total_s": round(time.perf_counter() - started, 4)},
            gates=[], warnings=result.warnings()), dest

    doc, dest = guarded(options, body)
    guarded(options, lambda: finish(doc, options, dest))


def register_inspect(app: typer.Typer) -> None:
    key = inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=Annotated[
        str, typer.Option(help="Where the weights are in the file: auto, or a key such as ema or "
                          "state_dict.")])
    register(app, INSPECT, help=HELP, epilog=EPILOG, params=[CHECKPOINT, key, *OUTPUT_OPTIONS],
             run=inspect_checkpoint_cli)
