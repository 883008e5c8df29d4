"""``spectrum --per-block``: the spectrum of each diagonal block H_bb of the Hessian (DESIGN §6
``blocks``), each block with its type, and the blocks' Jensen–Shannon heterogeneity."""

from __future__ import annotations

from typing import Literal

from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.density import DensityResult
from landscape_cli.results.rows import EachRanked, Ranked

#: What a block is, in the order the table groups them (``analyses/blocks.py`` says which is
#: which, from the module kinds and parameter names); a block whose parameters differ in kind is
#: ``other``.
BLOCK_TYPES = ("embedding", "attention_q", "attention_k", "attention_v", "attention_qkv",
               "attention_out", "mlp", "norm", "other")
BlockType = Literal["embedding", "attention_q", "attention_k", "attention_v", "attention_qkv",
                    "attention_out", "mlp", "norm", "other"]

class BlockSpectrum(Result):
    """The top eigenvalues of one diagonal block H_bb, with residual bounds, and with
    ``--density`` its SLQ density."""

    name: str = reported(required=True)
    type: BlockType = reported()
    n_params: int = reported(required=True)
    #: the block's parameters (one for ``tensor`` blocks)
    parameters: list[str] = reported()
    top_eigenvalues: list[float] = reported(required=True)
    top_residuals: list[float] = reported(required=True)
    top_converged: list[bool] = reported()
    lanczos_steps: int = reported()
    #: what the products' own error adds to every residual (as ``SpectrumResult``'s)
    residual_floor: float = reported()
    density: DensityResult | None = reported(omit_none=True, default=None)
    notes: list[str] = internal(default_factory=list)

    def warnings(self) -> list[str]:
        return [*self.notes, *(self.density.warnings() if self.density is not None else [])]


#: One table row per block and top eigenvalue: the block's type, name and size, then the rank,
#: eigenvalue, residual and converged flag (the columns of the whole spectrum's rows).
BLOCK_ROWS = EachRanked("blocks", columns={"type": "type", "block": "name", "n_params": "n_params"},
                        inner=Ranked(fixed={"end": "block"},
                                     lists={"eigenvalue": "top_eigenvalues",
                                            "residual": "top_residuals",
                                            "converged": "top_converged"}))
