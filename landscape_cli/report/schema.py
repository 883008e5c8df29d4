"""The report's JSON Schema (DESIGN §6), from typed models of the document.

The models name the keys the contract fixes; every object stays open (``extra="allow"``) so
that keys added later do not break validators built from an older schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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


class Density(_Open):
    grid: list[float]
    values: list[Number]
    nodes: list[list[Number]]
    weights: list[list[Number]]
    negative_mass: Number
    negative_threshold: Number
    negative_weight_ratio: Number


class SpectrumResults(_Open):
    top_eigenvalues: list[Number]
    top_residuals: list[Number]
    top_converged: list[bool]
    bottom_eigenvalues: list[Number] | None = None
    bottom_residuals: list[Number] | None = None
    bottom_converged: list[bool] | None = None
    density: Density | None = None


class TraceResults(_Open):
    trace: Number
    stderr: Number
    ci95: list[Number] = Field(min_length=2, max_length=2)
    trace_per_param: Number
    method: Literal["hutchpp", "hutchinson"]
    probes: int


class CriticalResults(_Open):
    verdict: Literal["minimum", "saddle", "maximum", "degenerate", "not_critical"]
    grad_norm: Number
    lambda_min: Number
    lambda_max: Number
    negative_fraction: Number
    evidence: list[str]


class InspectResults(_Open):
    format: str
    n_tensors: int
    n_params: int
    unsafe_globals: list[str]
    tensors: list[dict[str, Any]]


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
