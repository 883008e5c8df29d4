"""The command registry: one declaration per command drives the CLI (``landscape NAME``), the
API (``analyze(NAME, ...)``), the report's JSON Schema, the gate names checked before a run
and the table rows (the last three through its result type, ``landscape_cli.results``).

An analysis command is a function ``fn(run, **options) -> result`` whose keyword parameters
declare its options (``landscape_cli.options``), with its help text and result type. Torch-free
at import, so that ``landscape --help`` starts at once: a command imports its science when it
runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from landscape_cli.results.base import Result
from landscape_cli.results.inspect import InspectResult


@dataclass(frozen=True)
class Command:
    """An analysis command: its function, help, examples, and its result type (torch-free,
    ``landscape_cli.results``), whose gate names are checked before a run."""

    name: str
    run: Callable[..., Any]
    help: str
    epilog: str
    result: type[Result]
    #: whether it takes several checkpoints (``interpolate``) rather than one
    many: bool = False
    #: what of these options a sharded model (``--shard-model``) cannot run (None: it can all);
    #: a command without it does not run on a sharded model
    sharded: Callable[[dict[str, Any]], str | None] | None = None


def _commands() -> dict[str, Command]:
    from landscape_cli.commands import critical, interpolate, sharpness, spectrum, trace

    return {c.name: c for c in (spectrum.COMMAND, trace.COMMAND, sharpness.COMMAND,
                                interpolate.COMMAND, critical.COMMAND)}


#: The analysis commands, by name.
COMMANDS: dict[str, Command] = _commands()

#: ``landscape inspect`` (``cli/inspect.py``): a report of what a checkpoint holds, with no
#: analysis run, hence no settings or cost of one.
INSPECT = "inspect"


def result_types() -> dict[str, type[Result]]:
    """Every report's result type by the report's ``command``: each analysis command's, and
    inspect's. Read at each call, so that a command registered later is in it."""
    return {**{name: spec.result for name, spec in COMMANDS.items()}, INSPECT: InspectResult}
