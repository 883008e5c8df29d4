"""The report's JSON Schema (DESIGN §6), from typed models of the document.

The envelope is written here; the reports it describes, one per command, are those of the
command registry (``landscape_cli.commands``, which ``landscape schema`` passes in), and each
command's ``results`` model is generated from its result type's declaration
(``landscape_cli.results``). A batch line is a report with its ``batch_key``, or the error
line of a checkpoint that failed. Every object stays open (``extra="allow"``) so
that keys added later do not break validators built from an older schema.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import cache
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from landscape_cli.names import Precision
from landscape_cli.results.base import Result

Number = float | None  # NaN and Inf are written as null


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Tool(_Open):
    name: Literal["landscape"]
    version: str
    torch: str


class Checkpoint(_Open):
    path: str
    sha256: str | None = None
    format: str | None = None
    n_params: int | None = None


class Settings(_Open):
    device: str
    dtype: Literal["float32", "float64"]
    precision: Precision = Field(description="How the passes ran (Lightning's names): 32 and 64 "
                                 "in the dtype, bf16-mixed and 16-mixed under autocast over "
                                 "float32 weights")
    seed: int
    bn: Literal["eval", "train-stats"]
    n_samples: int
    config_sha256: str
    threads: int = Field(None, description="CPU threads torch ran on: the same threads give the "
                         "same numbers, others the same within the reported errors")
    shard: Literal["fsdp"] = Field(None, description="The model was sharded over the ranks "
                                   "with FSDP2 (--shard-model): products by finite differences, "
                                   "vectors held as shards")


class Cost(_Open):
    hvps: int
    grads: int
    wall_s: float
    total_s: float
    peak_memory_bytes: int = Field(description="Peak memory: on CUDA the most the allocator "
                                   "held for tensors during the run (this rank's under torchrun), "
                                   "elsewhere the process's peak resident set size (max RSS)")
    peak_memory_bytes_max_over_ranks: int = Field(None, description="Under torchrun: the largest "
                                                  "peak_memory_bytes of any rank")


class Gate(_Open):
    expr: str
    value: Number
    violated: bool


def _json_type(hint: Any) -> Any:
    """The JSON type of a declared Python type: floats may be null (NaN and Inf are written
    so), a fixed-length tuple is an array of that length, a nested result its own model."""
    if hint is float:
        return Number
    if isinstance(hint, type) and issubclass(hint, Result):
        return results_model(hint)
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple:
        return Annotated[list[Union[tuple(map(_json_type, args))]],  # noqa: UP007 (a computed union)
                         Field(min_length=len(args), max_length=len(args))]
    if origin in (Union, UnionType):
        return Union[tuple(map(_json_type, args))]  # noqa: UP007 (a computed union)
    if origin is list:
        return list[_json_type(args[0])]
    if origin is dict:
        return dict[args[0], _json_type(args[1])]
    return hint


@cache
def results_model(result_type: type[Result]) -> type[BaseModel]:
    """The model of a result type's ``results``: each declared key, required where the type
    says DESIGN §6 names it (the others may be absent), open to keys added later."""
    fields = {k.name: (_json_type(k.type), ... if k.required else None) for k in result_type.KEYS}
    return create_model(result_type.__name__, __base__=_Open, **fields)


class _Report(_Open):
    schema_version: Literal["1"]
    status: Literal["ok"]
    tool: Tool
    checkpoint: Checkpoint
    gates: list[Gate]
    warnings: list[str]


class _Analysis(_Report):
    status: Literal["ok", "interrupted"] = Field(
        description="interrupted: SIGINT or SIGTERM stopped the run; the results are its "
                    "estimate so far, marked not converged")
    settings: Settings
    cost: Cost
    batch_key: str = Field(None, description="On a batch line: the key it is resumed by.")


class BatchError(_Open):
    """A batch line whose checkpoint failed: the one-line message instead of a report."""

    schema_version: Literal["1"]
    status: Literal["error"]
    error: str
    checkpoint: Checkpoint
    batch_key: str | None = Field(description="The key it is resumed by; null where the config "
                                              "could not be read (always retried).")


def _model_name(command: str) -> str:
    return "".join(part.title() for part in command.split("-")) + "Report"


def report_type(reports: Mapping[str, type[Result]], analyses: Collection[str]) -> TypeAdapter:
    """Every document a command writes: a report, one model per command by its ``command``
    (``reports``: each command's result type; ``analyses``: the commands whose report is an
    analysis run's, with settings and cost), or a batch line of a failed checkpoint."""
    models = tuple(create_model(_model_name(name), __base__=_Analysis if name in analyses else _Report,
                                command=(Literal[name], ...), results=(results_model(kind), ...))
                   for name, kind in reports.items())
    error = create_model("BatchErrorLine", __base__=BatchError,
                         command=(Literal[tuple(analyses)], ...))
    return TypeAdapter(Union[Annotated[Union[models], Field(discriminator="command")], error])  # noqa: UP007 (a computed union)


def json_schema(reports: Mapping[str, type[Result]], analyses: Collection[str]) -> dict[str, Any]:
    """The JSON Schema every document satisfies (``report_type``): exactly one of its
    alternatives, since a report's ``status`` is never a batch error line's."""
    schema = report_type(reports, analyses).json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": "landscape report or batch line (schema_version 1)",
              "oneOf": schema.pop("anyOf"), **schema}
    return schema
