"""Stochastic Lanczos quadrature (SLQ): the spectral density of a symmetric operator.

The spectral measure μ = (1/n) Σᵢ δ(λ − λᵢ) satisfies ∫ f dμ = tr f(A)/n = E[vᵀ f(A) v] for a
random v with E[vvᵀ] = I/n (Rademacher ±1/√n here). m Lanczos steps from v give a tridiagonal
T = U diag(θ) Uᵀ whose Gauss quadrature Σⱼ τⱼ f(θⱼ), τⱼ = U₀ⱼ², equals vᵀ f(A) v for every
polynomial f of degree < 2m (Golub & Meurant 2010, ch. 6); averaging over independent v gives
the density estimate (Lin, Saad & Yang 2016, "Approximating spectral densities of large
matrices", §3.2; Ghorbani, Krishnan & Xiao 2019, "An investigation into neural net optimization
via Hessian eigenvalue density").

All runs advance together: each step is one block product A·V with V (runs × n), so an engine
that batches Hessian-vector products pays much less per vector. Each run keeps its own basis
(runs × steps × n, grown by doubling as steps are taken) and is fully reorthogonalized against
it, twice ("twice is enough").
Without reorthogonalization only three vectors per run are kept (runs × 3 × n): orthogonality
is lost once Ritz values converge, which adds spurious copies of converged nodes, but the
quadrature stays accurate for the smooth functionals SLQ estimates (Knizhnerman 1996; Ubaru,
Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from landscape_cli.linalg.host import read_finite
from landscape_cli.linalg.lanczos import tridiagonal_eigh
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.probes import rademacher as signs
from landscape_cli.linalg.so_far import SoFar


@dataclass
class SLQResult:
    """Gauss quadrature nodes θ and weights τ of each run, float64 on CPU, shape (runs, m).

    Run r's first ``lengths[r]`` entries are its quadrature (weights summing to 1); a run that
    broke down early is padded with its largest node at weight 0, which changes no sum.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    lengths: list[int]

    @property
    def runs(self) -> int:
        return self.nodes.shape[0]

    def per_run(self) -> tuple[list[list[float]], list[list[float]]]:
        """Nodes and weights as lists per run, each cut to its valid length."""
        return ([row[:m].tolist() for row, m in zip(self.nodes, self.lengths)],
                [row[:m].tolist() for row, m in zip(self.weights, self.lengths)])


def rademacher(runs: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``runs`` rows of independent ±1/√n entries (float64, CPU): unit vectors, E[vvᵀ] = I/n."""
    return signs(runs, n, generator) / math.sqrt(n)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Each row w[r] minus its projection on the rows of basis[r] (k × n), done twice."""
    for _ in range(2):
        w = w - torch.einsum("rkn,rk->rn", basis, torch.einsum("rkn,rn->rk", basis, w))
    return w


def slq(operator: LinearOperator, *, runs: int = 10, steps: int = 90,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, int], None] | None = None,
        reorthogonalize: bool = True, so_far: SoFar | None = None) -> SLQResult:
    """``runs`` independent Lanczos quadratures of ``steps`` steps (at most n) each.

    ``operator`` is called once per step with the rows (k × n) of the runs still going. A run
    stops early when β ≤ √ε·‖T‖ (its Krylov space is invariant, so its quadrature is already
    exact). ``callback(step, finished_runs, runs)`` is called after each step.
    ``reorthogonalize=False`` keeps three vectors per run instead of the whole basis (see the
    module docstring).
    """
    n, dtype, device = operator.size, operator.dtype, operator.device
    if runs < 1 or steps < 1 or n < 1:
        raise ValueError(f"slq needs runs, steps and n ≥ 1 (got {runs}, {steps}, {n})")
    steps = min(steps, n)
    eps = torch.finfo(dtype).eps
    # grown by doubling along the steps as they are taken (``memory.slq_bytes``)
    basis = torch.zeros(runs, 1, n, dtype=dtype, device=device) if reorthogonalize else None
    alphas = torch.zeros(runs, steps, dtype=torch.float64)
    betas = torch.zeros(runs, steps, dtype=torch.float64)
    scale = torch.zeros(runs, dtype=torch.float64)  # largest |α|, |β| so far: ‖T‖ estimate
    lengths = [steps] * runs
    active = list(range(runs))
    q = rademacher(runs, n, generator).to(device=device, dtype=dtype)
    previous = torch.zeros_like(q)
    beta_prev = torch.zeros(runs, dtype=dtype, device=device)
    for step in range(steps):
        w = operator(q)
        alpha = (q * w).sum(dim=1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * previous
        if basis is not None:
            if step == basis.shape[1]:
                grown = basis.new_zeros(runs, min(2 * step, steps), n)
                grown[:, :step] = basis
                basis = grown
            basis[active, step] = q
            block = basis[:, : step + 1] if len(active) == runs else basis[active, : step + 1]
            w = _orthogonalize(w, block)
        beta = torch.linalg.vector_norm(w, dim=1)
        alpha64, beta64 = torch.tensor(read_finite(torch.stack((alpha, beta))),
                                       dtype=torch.float64).view(2, -1)  # the step's one sync
        alphas[active, step], betas[active, step] = alpha64, beta64
        scale[active] = torch.maximum(scale[active], torch.maximum(alpha64.abs(), beta64))
        keep = []
        for i, r in enumerate(active):
            if step + 1 < steps and beta64[i] <= eps ** 0.5 * max(float(scale[r]), 1e-300):
                lengths[r] = step + 1  # invariant subspace: T is complete, stop this run
            else:
                keep.append(i)
        if so_far is not None:  # the quadratures of the steps taken, every run cut there
            so_far.result = partial(_quadrature, alphas, betas, [min(m, step + 1) for m in lengths])
        if callback is not None:
            callback(step + 1, runs - len(keep) if step + 1 < steps else runs, runs)
        if not keep or step + 1 == steps:
            break
        index = torch.tensor(keep, device=device)
        active = [active[i] for i in keep]
        previous, beta_prev = q.index_select(0, index), beta.index_select(0, index)
        q = w.index_select(0, index) / beta_prev[:, None]
    return _quadrature(alphas, betas, lengths)


def _quadrature(alphas: torch.Tensor, betas: torch.Tensor, lengths: list[int]) -> SLQResult:
    """Nodes θ = eig(T_r) and weights τ = (first components of T_r's eigenvectors)² per run."""
    width = max(lengths)
    nodes = torch.zeros(len(lengths), width, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    for r, m in enumerate(lengths):
        values, vectors = tridiagonal_eigh(alphas[r, :m].tolist(), betas[r, : m - 1].tolist())
        tau = vectors[0] ** 2
        nodes[r, :m], weights[r, :m] = values, tau / tau.sum()  # Σ τ = 1 up to rounding
        nodes[r, m:] = values[-1]
    return SLQResult(nodes=nodes, weights=weights, lengths=list(lengths))


# ----------------------------------------------------------------------------- functionals of μ


def gaussian_density(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor,
                     sigma: float) -> torch.Tensor:
    """φ(t) = (1/runs) Σ_r Σ_j τ_rj·N(t; θ_rj, σ²) on ``grid``: the SLQ measure broadened by
    a Gaussian of width σ (Lin, Saad & Yang 2016, eq. 3.3); it integrates to 1."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    theta, tau = nodes.reshape(-1).double(), weights.reshape(-1).double() / nodes.shape[0]
    t = torch.as_tensor(grid, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((t[:, None] - theta[None, :]) / sigma) ** 2)
    return kernel @ tau / (sigma * math.sqrt(2 * math.pi))


def negative_mass(nodes: torch.Tensor, weights: torch.Tensor, threshold: float) -> float:
    """μ((−∞, −threshold)) ≈ (1/runs) Σ_r Σ_{θ_rj < −threshold} τ_rj: the estimated fraction
    of eigenvalues below −threshold (an index estimate, Ghorbani et al. 2019 §3)."""
    return float((weights * (nodes < -threshold)).sum() / nodes.shape[0])


def negative_weight_ratio(nodes: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ_{θ<0} τ|θ| / Σ τ|θ| ≈ Σ_{λ<0}|λ| / Σ|λ| = tr|A|₋ / tr|A| (NaN when A = 0).

    A smooth functional of μ, so SLQ estimates it without the resolution limit of a count."""
    magnitude = weights * nodes.abs()
    total = float(magnitude.sum())
    if total == 0:
        return math.nan
    return float((magnitude * (nodes < 0)).sum()) / total
