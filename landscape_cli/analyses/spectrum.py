"""``spectrum``: extreme Hessian eigenvalues by Lanczos (Ghorbani et al. 2019 use the same
Krylov machinery; Yao et al. 2020 (PyHessian) use power iteration, which needs far more HVPs),
and with ``--density`` the eigenvalue density by stochastic Lanczos quadrature
(``analyses/density.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from landscape_cli.linalg.lanczos import LanczosResult, lanczos
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.results.spectrum import SpectrumResult


def spectrum(operator: LinearOperator, *, top: int = 5,
             bottom: int = 0, tol: float = 1e-4, max_hvps: int | None = None, seed: int = 0,
             callback: Callable[[int, int, int], None] | None = None) -> SpectrumResult:
    """Lanczos with full reorthogonalization on the HVP operator. An operator of size n has n
    eigenvalues: asking for more gets all n, with a note."""
    n = operator.size
    notes = [f"--{name} {count} is more than the {n} parameters analysed: reporting {n}"
             for name, count in (("top", top), ("bottom", bottom)) if count > n]
    top, bottom = min(top, n), min(bottom, n)
    generator = torch.Generator().manual_seed(seed)
    run: LanczosResult = lanczos(operator, top=top, bottom=bottom, tol=tol, max_steps=max_hvps,
                                 generator=generator, callback=callback)
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
