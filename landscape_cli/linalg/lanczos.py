"""Lanczos with full reorthogonalization: extreme eigenpairs of a symmetric operator.

After m steps, AQ_m = Q_m T_m + β_m q_{m+1} e_mᵀ, so a Ritz pair (θᵢ, yᵢ = Q_m sᵢ) of the
tridiagonal T_m has residual ‖Ayᵢ − θᵢyᵢ‖ = |β_m·s_{m,i}|, and some eigenvalue of A lies
within that distance of θᵢ (Parlett, *The Symmetric Eigenvalue Problem*, §13.2). Every new
vector is orthogonalized twice against all previous ones ("twice is enough", Giraud et al.
2005), so no spurious copies appear. On breakdown (an invariant subspace found) the run
restarts from a fresh random vector orthogonal to the basis, which also exposes repeated
eigenvalues (the coupling β it drops, below √ε·‖A‖, still counts in the residual bounds).
The reported residuals are measured, not estimated, with one extra product in all: keeping
the reorthogonalization coefficients turns the recurrence into the Arnoldi relation
AQ_m = Q_{m+1}H_m for the products as computed, so ‖Ay − θy‖ = ‖H_m s − θs‖ carries the
operator's asymmetry that |β_m·s_{m,i}| cannot see (Stewart, *Matrix Algorithms II*, §5.1);
one fresh product A·y of the first wanted Ritz vector adds what H_m cannot see either, the
rounding of a product itself, to every residual. Where the products round in less than float64
(float32 HVPs), that product is taken instead with the operator's float64 counterpart
(``exact()``), for every wanted Ritz vector: ‖A₆₄y − θy‖ bounds the distance from θ to an
eigenvalue of the exact operator (the float32 operator's own residual does not: it measures the
products against themselves), and what it adds to the residuals is added to every one. The
Krylov arithmetic (basis, dot products, norms, reorthogonalization, T) is float64 whatever
the operator's dtype: a float32 basis loses orthogonality at ~1e-7 per step, which bounds the
Ritz values at ~1e-4 on a model of millions of parameters, while the products' own rounding
allows ~1e-6.
Memory: the basis, steps·n float64 numbers, grown as steps are taken. Operator in
(``linalg/operator.py``), numbers out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape_cli.linalg.host import read_finite
from landscape_cli.linalg.operator import LinearOperator, product_error

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RitzPairs:
    """Ritz values at one end of the spectrum, their residual bounds and convergence."""

    values: list[float]
    residuals: list[float]
    converged: list[bool]
    #: the Ritz vectors Q_m·sᵢ (rows, unit norm, in the order of ``values``; float64)
    vectors: torch.Tensor | None = None


@dataclass
class LanczosResult:
    """Top Ritz values (descending) and bottom ones (ascending) after ``steps`` steps."""

    top: RitzPairs
    bottom: RitzPairs
    steps: int
    scale: float
    #: what the products' own error (rounding, and in float32 the distance to the float64
    #: products) adds to every residual (measured, see _measured)
    rounding: float = 0.0
    #: products spent measuring the residuals (float64 ones where the operator's round in less)
    checks: int = 1

    @property
    def converged(self) -> bool:
        return all(self.top.converged) and all(self.bottom.converged)

    @property
    def products(self) -> int:
        """Matvecs spent: one per step, and those for the measured residuals (if any)."""
        return self.steps + (self.checks if self.top.values or self.bottom.values else 0)


def tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """The symmetric tridiagonal T with diagonal α and off-diagonal β (float64, CPU)."""
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


def tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal T (float64, CPU)."""
    return torch.linalg.eigh(tridiagonal(alphas, betas))


def _ends(m: int, top: int, bottom: int) -> tuple[list[int], list[int]]:
    """Indices of the ``top`` largest (descending) and ``bottom`` smallest of m ascending values."""
    return list(range(m - 1, m - 1 - top, -1)), list(range(bottom))


def _coupling_bound(vectors: torch.Tensor, couplings: list[tuple[int, float]]) -> torch.Tensor:
    """Σ |β_j·s_{j,i}| over the couplings (j, β_j) that T leaves out, for each column sᵢ."""
    return sum((abs(beta) * vectors[j]).abs() for j, beta in couplings)


def _ritz(values: torch.Tensor, vectors: torch.Tensor, couplings: list[tuple[int, float]],
          top: int, bottom: int, tol: float) -> tuple[RitzPairs, RitzPairs, float]:
    """Ritz pairs at both ends; a pair's residual is Σ |β_j·s_{j,i}| over the couplings
    (j, β_j) that T leaves out: the last step's, and those dropped at restarts."""
    residuals = _coupling_bound(vectors, couplings)
    scale = float(values.abs().max())
    limit = tol * max(scale, torch.finfo(torch.float64).tiny)
    order_top, order_bottom = _ends(len(values), top, bottom)

    def pairs(indices: list[int]) -> RitzPairs:
        return RitzPairs(values=[float(values[i]) for i in indices],
                         residuals=[float(residuals[i]) for i in indices],
                         converged=[bool(residuals[i] <= limit) for i in indices])

    return pairs(order_top), pairs(order_bottom), scale


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w minus its projection on the rows of ``basis``, done twice for stability, and the
    coefficients of what was removed."""
    removed = torch.zeros(len(basis), dtype=w.dtype, device=w.device)
    for _ in range(2):
        coefficients = basis @ w
        w = w - basis.T @ coefficients
        removed = removed + coefficients
    return w, removed


def lanczos(operator: LinearOperator, *, top: int = 1, bottom: int = 0, tol: float = 1e-4,
            max_steps: int | None = None, generator: torch.Generator | None = None,
            callback: Callable[[int, int, int], None] | None = None) -> LanczosResult:
    """The ``top`` largest and ``bottom`` smallest eigenvalues of a symmetric operator whose
    products are computed in its dtype (the Krylov arithmetic is float64).

    Stops once every requested Ritz value has residual ≤ ``tol``·‖A‖ (‖A‖ estimated by the
    largest |Ritz value|), or after ``max_steps`` matvecs (at most n, where T_n is exact).
    ``callback(step, converged, wanted)`` is called after each step.
    """
    n, dtype, device = operator.size, operator.dtype, operator.device
    top, bottom = min(top, n), min(bottom, n)
    wanted = top + bottom
    max_steps = n if max_steps is None else max(1, min(max_steps, n))
    krylov = torch.float64
    basis = torch.empty(min(max_steps, 32), n, dtype=krylov, device=device)  # grows by doubling
    eps = torch.finfo(dtype).eps  # breakdown is judged at the products' own precision

    def product(v: torch.Tensor) -> torch.Tensor:
        return operator(v.to(dtype)[None])[0].to(krylov)

    def random_unit() -> torch.Tensor:
        v = torch.randn(n, generator=generator, dtype=dtype, device="cpu").to(device, krylov)
        return v / torch.linalg.vector_norm(v)

    q = random_unit()
    alphas: list[float] = []
    betas: list[float] = []
    dropped: list[tuple[int, float]] = []  # (step, β) of couplings cut at restarts
    columns: list[torch.Tensor] = []  # reorthogonalization coefficients of each step
    beta, prev = 0.0, None
    result = None
    block_start, first_block, at_last_breakdown = 0, None, None
    for step in range(max_steps):
        if step == len(basis):
            extra = torch.empty(min(len(basis), max_steps - len(basis)), n, dtype=krylov,
                                device=device)
            basis = torch.cat((basis, extra))
        basis[step] = q
        w = product(q)
        alpha_t = torch.dot(q, w)
        w = w - alpha_t * q - (beta * prev if prev is not None else 0)
        w, removed = _orthogonalize(w, basis[: step + 1])
        columns.append(removed)
        beta_t = torch.linalg.vector_norm(w)
        alpha, beta = read_finite(torch.stack((alpha_t, beta_t)))  # the step's one sync
        alphas.append(alpha)
        betas.append(beta)
        values, vectors = tridiagonal_eigh(alphas, betas)
        top_pairs, bottom_pairs, scale = _ritz(values, vectors, [*dropped, (step, beta)],
                                               min(top, step + 1), min(bottom, step + 1), tol)
        result = LanczosResult(top_pairs, bottom_pairs, step + 1, scale)
        if callback is not None:
            callback(step + 1, sum(top_pairs.converged) + sum(bottom_pairs.converged), wanted)
        if step + 1 == n:
            break
        complete = len(top_pairs.values) == top and len(bottom_pairs.values) == bottom
        if beta <= eps ** 0.5 * max(scale, abs(alpha), 1e-300):
            # Invariant subspace. A fresh random block in its orthogonal complement holds a
            # copy of every eigenvalue left there; once such a block adds nothing to the
            # wanted values, no repeated copy is missing (β = 0 decouples T into blocks).
            wanted_now = torch.tensor(top_pairs.values + bottom_pairs.values)
            if (complete and at_last_breakdown is not None
                    and torch.allclose(wanted_now, at_last_breakdown, rtol=0, atol=tol * scale)):
                break
            fresh, _ = _orthogonalize(random_unit(), basis[: step + 1])
            norm = float(torch.linalg.vector_norm(fresh))
            if norm < 1e-8:
                break
            at_last_breakdown = wanted_now
            first_block = first_block or step + 1
            dropped.append((step, beta))
            betas[-1], beta, prev, q, block_start = 0.0, 0.0, None, fresh / norm, step + 1
            continue
        # After a restart, a block must outlast the first one before a stop by convergence:
        # a shorter one may not yet show a repeated copy.
        if (step + 1 >= wanted and complete and result.converged
                and (first_block is None or step + 1 - block_start > first_block)):
            break
        prev, q = q, w / beta_t
    return _measured(result, product, operator.exact(), basis[: result.steps], columns, alphas,
                     betas, dropped, vectors, values, tol, operator)


def _measured(result: LanczosResult, product: Matvec, exact: LinearOperator | None,
              basis: torch.Tensor,
              columns: list[torch.Tensor], alphas: list[float], betas: list[float],
              dropped: list[tuple[int, float]], vectors: torch.Tensor, values: torch.Tensor,
              tol: float, operator: LinearOperator) -> LanczosResult:
    """Replace the estimated residuals of the requested pairs by measured ones: column j of
    H_m holds the coefficients of A·q_j on q_0..q_{j+1} (α_j, β_{j−1}, β_j and what the
    reorthogonalization removed), so ‖Ay − θy‖ = ‖H_m s − θs‖, plus |β_j·s_j| for each
    coupling a restart dropped. The first wanted pair's residual is also measured with a fresh
    product, or, where ``exact`` (the operator in float64) is given, every wanted pair's with a
    float64 product; the most that adds is the products' own error, added to every pair (one
    read), with the error the checking operator measured in its own products (finite
    differences: ``operator.product_error``)."""
    m = len(alphas)
    top, bottom = len(result.top.values), len(result.bottom.values)
    order_top, order_bottom = _ends(m, top, bottom)
    wanted = [*order_top, *order_bottom]
    if not wanted:
        return result
    s = vectors[:, wanted]
    if exact is None:
        checked = wanted[:1]
        y = s[:, 0].to(device=basis.device) @ basis
        y = y / torch.linalg.vector_norm(y)
        fresh_t = torch.linalg.vector_norm(product(y) - float(values[wanted[0]]) * y)[None]
    else:
        checked = wanted
        ys = s.T.to(device=basis.device) @ basis
        ys = ys / torch.linalg.vector_norm(ys, dim=1, keepdim=True)
        thetas = values[wanted].to(device=basis.device)[:, None]
        fresh_t = torch.linalg.vector_norm(exact(ys).to(basis.dtype) - thetas * ys, dim=1)
    numbers = read_finite(torch.cat((*columns, fresh_t)))
    cols, rows = torch.tril_indices(m, m)  # column j's rows 0..j, in the order they were stored
    H = torch.zeros(m + 1, m, dtype=torch.float64)
    H[rows, cols] = torch.tensor(numbers[:len(numbers) - len(checked)], dtype=torch.float64)
    H[:m] += tridiagonal(alphas, betas)
    H[m, m - 1] = betas[m - 1]
    gap = H @ s  # A·y on q_0..q_m, minus θ·y on q_0..q_{m-1}
    gap[:m] -= s * values[wanted]
    residuals = torch.linalg.vector_norm(gap, dim=0) + _coupling_bound(s, dropped)
    fresh = numbers[len(numbers) - len(checked):]
    rounding = max(0.0, *(f - float(r) for f, r in zip(fresh, residuals)))
    rounding += product_error(exact or operator)  # what approximate products measured of theirs
    measured = (residuals + rounding).tolist()
    limit = tol * max(result.scale, torch.finfo(torch.float64).tiny)

    def pairs(old: RitzPairs, residuals: list[float], vectors: torch.Tensor) -> RitzPairs:
        return RitzPairs(values=old.values, residuals=residuals,
                         converged=[r <= limit for r in residuals], vectors=vectors)

    ritz = s.T.to(device=basis.device) @ basis
    ritz = ritz / torch.linalg.vector_norm(ritz, dim=1, keepdim=True)
    return LanczosResult(pairs(result.top, measured[:top], ritz[:top]),
                         pairs(result.bottom, measured[top:], ritz[top:]),
                         result.steps, result.scale, rounding, checks=len(checked))
