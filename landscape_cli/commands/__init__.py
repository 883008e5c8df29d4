"""The analysis commands, Typer-free: each is a function ``fn(run, **options) -> result``
whose keyword parameters declare its options (``landscape_cli.options``), with its help
text and the result type it returns. The CLI and the runner both read ``COMMANDS``.
Torch-free at import, so that ``landscape --help`` starts at once: a command imports its
science when it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """An analysis command: its function, help, examples, and its result type (torch-free,
    ``landscape_cli.results``), whose gate names are checked before a run."""

    name: str
    run: Callable[..., Any]
    help: str
    epilog: str
    result: type
    #: whether it takes several checkpoints (``interpolate``) rather than one
    many: bool = False


def _commands() -> dict[str, Command]:
    from landscape_cli.commands import critical, interpolate, sharpness, spectrum, trace

    return {c.name: c for c in (spectrum.COMMAND, trace.COMMAND, sharpness.COMMAND,
                                interpolate.COMMAND, critical.COMMAND)}


COMMANDS: dict[str, Command] = _commands()
