"""``inspect``'s result: what a checkpoint holds, and whether the analyses may load it."""

from __future__ import annotations

from typing import Any, ClassVar

from landscape_cli.results.base import Result, reported
from landscape_cli.results.rows import Each, Rows


class InspectResult(Result, kw_only=True):
    """Format, tensors and safety of one checkpoint."""

    ROWS: ClassVar[tuple[Rows, ...]] = (Each("tensors"),)

    format: str = reported(required=True)
    key: str | None = reported()
    n_tensors: int = reported(gate=True, required=True)
    n_params: int = reported(gate=True, required=True)
    n_buffers: int = reported()
    detected_prefix: str | None = reported()
    unsafe_globals: list[str] = reported(required=True)
    #: whether ``weights_only`` loading accepts it (no unsafe globals)
    loadable: bool = reported(init=False)
    metadata: dict[str, Any] = reported(default_factory=dict)
    #: the optimizer state it holds (``RawOptimizerState.describe``), or why it cannot be read
    optimizer: dict[str, Any] | None = reported(omit_none=True, default=None)
    #: one entry per tensor: name, shape, dtype, numel, role
    tensors: list[dict[str, Any]] = reported(required=True)

    def __post_init__(self) -> None:
        self.loadable = not self.unsafe_globals

    def warnings(self) -> list[str]:
        out = []
        if self.unsafe_globals:
            out.append(f"weights_only loading refuses {', '.join(self.unsafe_globals)}; analyses "
                       "need --allow-global NAME for each, or --trust-checkpoint")
        if self.optimizer and "error" in self.optimizer:
            out.append(f"its optimizer state cannot be used: {self.optimizer['error']}")
        return out
