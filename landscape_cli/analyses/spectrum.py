"""``spectrum``: extreme Hessian eigenvalues by Lanczos (Ghorbani et al. 2019 use the same
Krylov machinery; Yao et al. 2020 (PyHessian) use power iteration, which needs far more HVPs),
and with ``--density`` the eigenvalue density by stochastic Lanczos quadrature
(``analyses/density.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from landscape_cli.analyses.density import DensityResult
from landscape_cli.linalg.lanczos import LanczosResult, lanczos


@dataclass
class SpectrumResult:
    """Top-k (descending) and bottom-k (ascending) Hessian eigenvalues with residual bounds."""

    #: The names ``scalars`` can hold (``top_N``: top_1, top_2, ...), checked before the run.
    GATES: ClassVar[tuple[str, ...]] = ("lambda_max", "lambda_min", "top_N", "bottom_N",
                                        "negative_mass", "negative_weight_ratio")

    top_eigenvalues: list[float]
    top_residuals: list[float]
    top_converged: list[bool]
    bottom_eigenvalues: list[float] | None
    bottom_residuals: list[float] | None
    bottom_converged: list[bool] | None
    lanczos_steps: int
    tol: float
    #: what the products' own rounding adds to every residual (Lanczos._measured)
    residual_floor: float
    #: True when the step budget ran out; else the products' precision stopped convergence
    budget_spent: bool
    density: DensityResult | None = None
    notes: list[str] = field(default_factory=list)

    def results(self) -> dict:
        out = {
            "top_eigenvalues": self.top_eigenvalues,
            "top_residuals": self.top_residuals,
            "top_converged": self.top_converged,
        }
        if self.bottom_eigenvalues is not None:
            out.update(bottom_eigenvalues=self.bottom_eigenvalues,
                       bottom_residuals=self.bottom_residuals,
                       bottom_converged=self.bottom_converged)
        out.update(lanczos_steps=self.lanczos_steps, tol=self.tol,
                   residual_floor=self.residual_floor)
        if self.density is not None:
            out["density"] = self.density.results()
        return out

    def scalars(self) -> dict[str, float]:
        """Named numbers for gates, CSV summaries and batch trends."""
        out = {"lambda_max": self.top_eigenvalues[0]}
        out.update({f"top_{i + 1}": v for i, v in enumerate(self.top_eigenvalues)})
        if self.bottom_eigenvalues:
            out["lambda_min"] = self.bottom_eigenvalues[0]
            out.update({f"bottom_{i + 1}": v for i, v in enumerate(self.bottom_eigenvalues)})
        if self.density is not None:
            out.update(self.density.scalars())
        return out

    def warnings(self) -> list[str]:
        notes = [*self.notes, *(self.density.warnings() if self.density is not None else [])]
        missed = self.top_converged.count(False) + (self.bottom_converged or []).count(False)
        if missed:
            why = ("raise --max-hvps or loosen --tol" if self.budget_spent else
                   f"not for want of steps: the products' own rounding puts a floor of "
                   f"{self.residual_floor:.2g} under every residual; use --dtype float64 or "
                   "loosen --tol")
            notes.append(f"{missed} requested eigenvalue(s) did not reach residual ≤ {self.tol:g}·"
                         f"|λ|max in {self.lanczos_steps} Lanczos steps; {why}")
        return notes


def spectrum(hvp: Callable[[torch.Tensor], torch.Tensor], n: int, *, top: int = 5,
             bottom: int = 0, tol: float = 1e-4, max_hvps: int | None = None, seed: int = 0,
             dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
             callback: Callable[[int, int, int], None] | None = None) -> SpectrumResult:
    """Lanczos with full reorthogonalization on the HVP operator. An operator of size n has n
    eigenvalues: asking for more gets all n, with a note."""
    notes = [f"--{name} {count} is more than the {n} parameters analysed: reporting {n}"
             for name, count in (("top", top), ("bottom", bottom)) if count > n]
    top, bottom = min(top, n), min(bottom, n)
    generator = torch.Generator().manual_seed(seed)
    run: LanczosResult = lanczos(hvp, n, top=top, bottom=bottom, tol=tol, max_steps=max_hvps,
                                 generator=generator, dtype=dtype, device=device,
                                 callback=callback)
    return SpectrumResult(
        top_eigenvalues=run.top.values,
        top_residuals=run.top.residuals,
        top_converged=run.top.converged,
        bottom_eigenvalues=run.bottom.values if bottom else None,
        bottom_residuals=run.bottom.residuals if bottom else None,
        bottom_converged=run.bottom.converged if bottom else None,
        lanczos_steps=run.steps,
        tol=tol,
        residual_floor=run.rounding,
        budget_spent=run.steps >= min(n, max_hvps or n),
        notes=notes,
    )
