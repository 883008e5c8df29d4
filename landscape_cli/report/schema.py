"""The report's JSON Schema (DESIGN §6), from typed models of the document.

The envelope is written here; each command's ``results`` model is generated from its result
type's declaration (``landscape_cli.results``). Every object stays open (``extra="allow"``) so
that keys added later do not break validators built from an older schema.
"""

from __future__ import annotations

from functools import cache
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from landscape_cli.results import CriticalPointResult, InspectResult, SpectrumResult, TraceResult
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
    seed: int
    bn: Literal["eval", "train-stats"]
    n_samples: int
    config_sha256: str


class Cost(_Open):
    hvps: int
    grads: int
    wall_s: float
    total_s: float


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


SpectrumResults = results_model(SpectrumResult)
TraceResults = results_model(TraceResult)
CriticalResults = results_model(CriticalPointResult)
InspectResults = results_model(InspectResult)


class _Report(_Open):
    schema_version: Literal["1"]
    status: Literal["ok", "interrupted"]
    tool: Tool
    checkpoint: Checkpoint
    gates: list[Gate]
    warnings: list[str]


class _Analysis(_Report):
    settings: Settings
    cost: Cost


class SpectrumReport(_Analysis):
    command: Literal["spectrum"]
    results: SpectrumResults


class TraceReport(_Analysis):
    command: Literal["trace"]
    results: TraceResults


class CriticalReport(_Analysis):
    command: Literal["classify-critical-point"]
    results: CriticalResults


class InspectReport(_Report):
    command: Literal["inspect"]
    results: InspectResults


Report = TypeAdapter(Annotated[SpectrumReport | TraceReport | CriticalReport | InspectReport,
                               Field(discriminator="command")])


def json_schema() -> dict[str, Any]:
    """The JSON Schema every report document satisfies."""
    schema = Report.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "landscape report (schema_version 1)"
    return schema
