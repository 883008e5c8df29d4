"""``spectrum``: extreme Hessian eigenvalues by Lanczos (Ghorbani et al. 2019 use the same
Krylov machinery; Yao et al. 2020 (PyHessian) use power iteration, which needs far more HVPs),
and with ``--density`` the eigenvalue density by stochastic Lanczos quadrature
(``analyses/density.py``); with ``--save-vectors`` the Ritz vectors go to a file
(``analyses/eigenvectors.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from landscape_cli.analyses.eigenvectors import VectorsFile, save_ritz_vectors
from landscape_cli.linalg.lanczos import LanczosResult, lanczos
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.results.spectrum import SpectrumResult


def spectrum(operator: LinearOperator, *, top: int = 5,
             bottom: int = 0, tol: float = 1e-4, max_hvps: int | None = None, seed: int = 0,
             callback: Callable[[int, int, int], None] | None = None,
             save_vectors: VectorsFile | None = None) -> SpectrumResult:
    """Lanczos with full reorthogonalization on the HVP operator. An operator of size n has n
    eigenvalues: asking for more gets all n, with a note. ``save_vectors``: where to write the
    Ritz vectors of the reported pairs (``save_ritz_vectors``)."""
    n = operator.size
    notes = [f"--{name} {count} is more than the {n} parameters analysed: reporting {n}"
             for name, count in (("top", top), ("bottom", bottom)) if count > n]
    top, bottom = min(top, n), min(bottom, n)
    generator = torch.Generator().manual_seed(seed)
    run: LanczosResult = lanczos(operator, top=top, bottom=bottom, tol=tol, max_steps=max_hvps,
                                 generator=generator, callback=callback)
    if save_vectors is not None:
        save_ritz_vectors(run.top, run.bottom if bottom else None, save_vectors)
        notes += _vectors_notes(save_vectors, n, top)
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
        basis=run.layout.describe(),
        saved_vectors=None if save_vectors is None else str(save_vectors.dest.path),
        top_vectors=run.top.vectors,
        notes=notes,
    )


def _vectors_notes(saved: VectorsFile, n: int, top: int) -> list[str]:
    """What the vectors file is not: a plane (one top vector), or for the whole model (--params)."""
    notes = []
    if top < 2:
        notes.append(f"--save-vectors {saved.dest.path}: one top vector, so the file is no plane "
                     "for interpolate --load-directions (that needs --top 2 or more)")
    if n < saved.model_parameters:
        notes.append(f"--save-vectors {saved.dest.path}: only the {n} analysed parameters (--params) "
                     f"are written, of the model's {saved.model_parameters}; interpolate "
                     "--load-directions needs every parameter")
    return notes
