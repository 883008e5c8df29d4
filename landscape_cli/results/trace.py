"""``trace``'s result: tr(H) with its standard error and 95% interval, optionally per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from landscape_cli.names import TraceMethod
from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.rows import Each, Row, Rows, item, text

if TYPE_CHECKING:
    from landscape_cli.linalg.trace import TraceEstimate

#: The estimators (declared once, torch-free, in ``names.py``).
Method = TraceMethod

#: The columns of a block's row: the total's and each layer's.
_BLOCK = {"block": "name", "n_params": "n_params", "trace": "trace", "stderr": "stderr",
          "ci95_low": item("ci95", 0), "ci95_high": item("ci95", 1),
          "trace_per_param": "trace_per_param", "hvps": "hvps"}


class LayerTrace(Result):
    """tr(H_gg) of one module's diagonal block (its weight and bias together)."""

    name: str = reported()
    n_params: int = reported()
    trace: float = reported()
    stderr: float = reported()
    ci95: tuple[float, float] = reported()
    trace_per_param: float = reported()
    hvps: int = reported()


class TraceResult(Result):
    """tr(H) with standard error and 95% interval; per-layer rows when asked for.

    Built from the estimator's own record, ``TraceResult(estimate, n_params, rtol)``: the keys
    that are not arguments are read from ``estimate``.
    """

    DERIVED_GATES: ClassVar[tuple[str, ...]] = ("relative_stderr",)
    ROWS: ClassVar[tuple[Rows, ...]] = (Row({**_BLOCK, "block": text("total ({method})")}),
                                        Each("per_layer", _BLOCK))

    estimate: TraceEstimate = internal()
    trace: float = reported(gate=True, required=True, init=False)
    stderr: float = reported(gate=True, required=True, init=False)
    ci95: tuple[float, float] = reported(required=True, init=False)
    trace_per_param: float = reported(gate=True, required=True, init=False)
    n_params: int = reported()
    method: Method = reported(required=True, init=False)
    probes: int = reported(required=True, init=False)
    sketch: int = reported(init=False)
    hvps: int = reported(init=False)
    converged: bool = reported(init=False)
    rtol: float = reported()
    #: fd products: the most their measured error can move the trace (in ``ci95`` already)
    fd_error_bound: float | None = reported(omit_none=True, init=False, default=None)
    per_layer: list[LayerTrace] | None = reported(omit_none=True, default=None)
    #: ``--diagonal``: the files written, the probes, the entries' median relative error
    diagonal: dict[str, Any] | None = reported(omit_none=True, default=None)
    #: --bootstrap: the trace's interval over resampled data (``ci95`` is the probes' share)
    data_ci95: tuple[float, float] | None = reported(omit_none=True, default=None)
    bootstrap: dict[str, Any] | None = reported(omit_none=True, default=None)
    notes: list[str] = internal(default_factory=list)

    def __post_init__(self) -> None:
        e = self.estimate
        self.trace, self.stderr, self.ci95 = e.trace, e.stderr, e.ci95
        self.trace_per_param = e.trace / self.n_params
        self.method, self.probes, self.sketch = e.method, e.probes, e.sketch
        self.hvps, self.converged = e.matvecs, e.converged
        self.fd_error_bound = e.bias_bound or None

    def derived_scalars(self) -> dict[str, float]:
        return {"relative_stderr": self.stderr / abs(self.trace) if self.trace else float("inf")}

    def warnings(self) -> list[str]:
        if self.converged:
            return list(self.notes)
        return [*self.notes, f"relative standard error {self.stderr / max(abs(self.trace), 1e-300):.3g} "
                f"did not reach --rtol {self.rtol:g} within {self.hvps} HVPs; raise --max-hvps"]
