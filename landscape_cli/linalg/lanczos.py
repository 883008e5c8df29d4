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
(``exact()``), for the first wanted Ritz vector at each end asked for: ‖A₆₄y − θy‖ bounds the
distance from θ to an eigenvalue of the exact operator (the float32 operator's own residual does
not: it measures the products against themselves), and what it adds to the residuals is added
to every one. The other wanted vectors are checked too where that deviation is not negligible
beside the tolerance (``CHECKED_SHARE``: mixed precision, a BatchNorm model at a tight
tolerance, a tolerance near float32's rounding). One float64 product costs several float32
ones, and checking every wanted vector took half of a top-5 run (``benchmarks/README.md``). The
Krylov arithmetic (basis, dot products, norms, reorthogonalization, T) is float64 whatever
the operator's dtype: a float32 basis loses orthogonality at ~1e-7 per step, which bounds the
Ritz values at ~1e-4 on a model of millions of parameters, while the products' own rounding
allows ~1e-6.
Memory: the basis, steps·n float64 numbers, grown by doubling as steps are taken, planned
against the operator's ``memory_left()`` before the first product (``linalg/memory.py``): where
it cannot hold the steps allowed, it is bounded and restarted when full, keeping the wanted
Ritz vectors and as many more (thick restart: Wu & Simon 2000, "Thick-restart Lanczos method
for large symmetric eigenvalue problems"), stored in float32 or held on the host where even
that does not fit in float64 on the device. Operator in (``linalg/operator.py``), numbers out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from landscape_cli.linalg.host import read_finite
from landscape_cli.linalg.memory import CHUNK_BYTES, BasisLayout, plan_lanczos
from landscape_cli.linalg.operator import LinearOperator, approximate, checked, product_error
from landscape_cli.linalg.shards import dimension, dot, drawn, norm, summed

Matvec = Callable[[torch.Tensor], torch.Tensor]
#: float32 products are checked in float64 at the first wanted Ritz vector of each end, and at
#: every other one too where the deviation found there exceeds this share of the tolerance
#: (tol·‖A‖): below it, a deviation several times larger at another vector would still be a few
#: percent of what the convergence verdicts resolve
CHECKED_SHARE = 0.01


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
    #: how the basis was held (``memory.BasisLayout``: storage, restarted, most vectors)
    layout: BasisLayout | None = None
    #: the basis' rows at the end: grown by doubling as steps were taken, at most ``layout``'s
    basis_rows: int = 0

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


def _orthogonalize(w: torch.Tensor, basis: KrylovBasis, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w minus its projection on the first ``size`` rows of ``basis``, done twice for stability,
    and the coefficients of what was removed."""
    removed = torch.zeros(size, dtype=w.dtype, device=w.device)
    for _ in range(2):
        coefficients = basis.coefficients(w, size)
        basis.subtract_combination(w, coefficients, size)
        removed = removed + coefficients
    return w, removed


class KrylovBasis:
    """The Lanczos vectors as the rows of one tensor, held as ``layout`` says (``linalg/memory.py``):
    grown by doubling as steps are taken up to ``layout.max_vectors`` rows, so no row exists
    before a step needs it. The arithmetic is float64 on the operator's ``device`` whatever the
    storage: a float64 basis on that device is multiplied whole (today's arithmetic, bit for
    bit), a float32 or host one a slice of columns at a time (``CHUNK_BYTES``)."""

    def __init__(self, n: int, layout: BasisLayout, device: torch.device,
                 sums: Callable[[torch.Tensor], torch.Tensor] = lambda partial: partial):
        #: sums: a partial reduction over the vectors added up over the ranks that hold them
        #: (``linalg/shards.py``: an all-reduce for a sharded operator's vectors)
        self.layout, self.device, self.sums = layout, device, sums
        home = torch.device("cpu") if layout.on_host else device
        # a bounded basis that restarts will fill: it takes its bound at once, which the plan
        # set aside for it, rather than a copy of half of it at the last doubling
        first = layout.max_vectors if layout.restarted else 1
        self.rows = torch.empty(first, n, dtype=layout.storage, device=home)
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size == self.layout.max_vectors

    def append(self, q: torch.Tensor) -> torch.Tensor:
        """Store q as the next row; q as stored (rounded where the storage is float32)."""
        if self.size == len(self.rows):
            grown = self.rows.new_empty(min(2 * len(self.rows), self.layout.max_vectors),
                                        self.rows.shape[1])
            grown[: self.size] = self.rows
            self.rows = grown
        self.rows[self.size] = q
        self.size += 1
        return q if self.layout.storage == torch.float64 else self._columns(self.size - 1, slice(None))[0]

    def rounding(self, q: torch.Tensor) -> torch.Tensor | None:
        """‖q − q as stored‖ (None where the storage is float64), a slice at a time."""
        if self.layout.storage == torch.float64:
            return None
        squares = sum(float(((q[c] - q[c].to(self.layout.storage).to(torch.float64)) ** 2).sum())
                      for c in self._slices(1))
        return self.sums(torch.tensor(squares, dtype=torch.float64, device=q.device)).sqrt()

    def _columns(self, start: int, columns: slice, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop (one row when stop is None) of some columns, float64 on the device."""
        rows = self.rows[start: start + 1 if stop is None else stop, columns]
        return rows.to(self.device, torch.float64)

    def _slices(self, size: int) -> list[slice]:
        width = max(1, CHUNK_BYTES // (8 * max(size, 1)))
        return [slice(i, i + width) for i in range(0, self.rows.shape[1], width)]

    def coefficients(self, w: torch.Tensor, size: int) -> torch.Tensor:
        """Q·w over the first ``size`` rows."""
        if self.layout.exact:
            return self.sums(self.rows[:size] @ w)
        return self.sums(sum(self._columns(0, c, size) @ w[c] for c in self._slices(size)))

    def combination(self, c: torch.Tensor, size: int) -> torch.Tensor:
        """Qᵀ·c over the first ``size`` rows."""
        if self.layout.exact:
            return self.rows[:size].T @ c
        return torch.cat([self._columns(0, cols, size).T @ c for cols in self._slices(size)])

    def subtract_combination(self, w: torch.Tensor, c: torch.Tensor, size: int) -> None:
        """w −= Qᵀ·c over the first ``size`` rows, in place (a slice at a time where the basis
        is read through slices: no temporary of n)."""
        if self.layout.exact:
            w.sub_(self.rows[:size].T @ c)
            return
        for cols in self._slices(size):
            w[cols].sub_(self._columns(0, cols, size).T @ c)

    def ritz(self, s: torch.Tensor, size: int) -> torch.Tensor:
        """s·Q over the first ``size`` rows (s a vector or rows of coefficients)."""
        s = s.to(device=self.device)
        if self.layout.exact:
            return s @ self.rows[:size]
        return torch.cat([s @ self._columns(0, c, size) for c in self._slices(size)], dim=-1)

    def restart(self, s: torch.Tensor) -> torch.Tensor:
        """Keep the rows Sᵀ·Q (thick restart), written over the first ones a slice at a time (no
        second basis); returns each kept row's distance to its stored value."""
        size, kept = s.shape
        s = s.to(self.device)
        rounding = torch.zeros(kept, dtype=torch.float64, device=self.device)
        for columns in self._slices(size):
            y = s.T @ self._columns(0, columns, size)
            self.rows[:kept, columns] = y
            if self.layout.storage != torch.float64:
                rounding += ((y - self._columns(0, columns, kept)) ** 2).sum(dim=1)
        self.size = kept
        return self.sums(rounding).sqrt()


def projected(kept: list[float], arrow: list[float], alphas: list[float],
              betas: list[float]) -> torch.Tensor:
    """The cycle's projection of A on the basis: the kept Ritz values on the diagonal, coupled to
    the first new vector by ``arrow`` (β·s_m of the restart), then the tridiagonal T."""
    T = tridiagonal(alphas, betas)
    if not kept:
        return T
    k = len(kept)
    whole = torch.zeros(k + len(alphas), k + len(alphas), dtype=torch.float64)
    whole[:k, :k] = torch.diag(torch.tensor(kept, dtype=torch.float64))
    whole[k:, k:] = T
    whole[k, :k] = whole[:k, k] = torch.tensor(arrow, dtype=torch.float64)
    return whole


def _kept(m: int, top: int, bottom: int) -> list[int]:
    """Indices (of m ascending Ritz values) a restart keeps: the wanted ends and as many again
    as half of the rest, shared between the ends asked for."""
    extra = max(1, (m - top - bottom) // 2)
    extra_top = extra if not bottom else (extra + 1) // 2 if top else 0
    kept_top = top + extra_top if top or not bottom else 0
    kept_bottom = bottom + extra - extra_top if bottom else 0
    return [*range(kept_bottom), *range(m - kept_top, m)]


def lanczos(operator: LinearOperator, *, top: int = 1, bottom: int = 0, tol: float = 1e-4,
            max_steps: int | None = None, generator: torch.Generator | None = None,
            callback: Callable[[int, int, int], None] | None = None,
            layout: BasisLayout | None = None, start: torch.Tensor | None = None) -> LanczosResult:
    """The ``top`` largest and ``bottom`` smallest eigenvalues of a symmetric operator whose
    products are computed in its dtype (the Krylov arithmetic is float64).

    Stops once every requested Ritz value has residual ≤ ``tol``·‖A‖ (‖A‖ estimated by the
    largest |Ritz value|), or after ``max_steps`` matvecs (at most n, where T_n is exact).
    ``callback(step, converged, wanted)`` is called after each step. The basis is held as
    ``layout`` says, by default as planned against the operator's ``memory_left()`` before the
    first product (``memory.plan_lanczos``; ``memory.NoMemory`` where nothing fits); a bounded
    one restarts when it fills (thick restart, Wu & Simon 2000): the Ritz pairs kept carry
    A·y = θy + b·q plus the error their cycle measured, which stays in every residual.
    ``start``: the first Krylov vector (a warm start, e.g. a nearby operator's Ritz vectors
    summed), instead of a random one.
    """
    # n: the whole vectors' length (the mathematics); held: this rank's share (the memory)
    n, held = dimension(operator), operator.size
    dtype, device = operator.dtype, torch.device(operator.device)
    top, bottom = min(top, n), min(bottom, n)
    wanted = top + bottom
    max_steps = n if max_steps is None else max(1, min(max_steps, n))
    if layout is None:
        layout = plan_lanczos(held, max_steps, wanted, tol, operator.memory_left(), device)
    krylov = torch.float64
    basis = KrylovBasis(held, layout, device, lambda partial: summed(operator, partial))
    eps = torch.finfo(dtype).eps  # breakdown is judged at the products' own precision

    def product(v: torch.Tensor) -> torch.Tensor:
        """A·v in float64, a fresh tensor (the step works on it in place)."""
        out = operator(v.to(dtype)[None])[0]
        return out.clone() if out.dtype == krylov else out.to(krylov)

    def random_unit() -> torch.Tensor:
        v = drawn(operator, lambda size: torch.randn(size, generator=generator, dtype=dtype,
                                                     device="cpu")).to(device, krylov)
        return v / norm(operator, v)

    if start is None:
        q = random_unit()
    else:
        q = start.to(device, krylov)
        q = q / norm(operator, q)
    alphas: list[float] = []
    betas: list[float] = []
    dropped: list[tuple[int, float]] = []  # (row, β) of couplings cut at breakdowns or carried
    columns: list[torch.Tensor] = []  # reorthogonalization coefficients of each step
    kept: list[float] = []  # the Ritz values a restart kept, and their coupling to the next row
    arrow: list[float] = []
    beta, prev = 0.0, None
    result = T = values = vectors = None  # the last step's run so far, projection, its eigh
    block_start, first_block, at_last_breakdown = 0, None, None
    for step in range(max_steps):
        if basis.full:
            kept, arrow, dropped, columns = _restart(basis, values, vectors, beta, columns, dropped,
                                                     T, top, bottom, result.scale)
            alphas, betas, prev = [], [], None
        row = basis.size
        q = basis.append(q)
        w = product(q)
        alpha_t = dot(operator, q, w)
        w.sub_(alpha_t * q)  # in place: the same numbers, no copy of n
        if kept and row == len(kept):
            basis.subtract_combination(w, torch.tensor(arrow, dtype=krylov, device=device), row)
        elif prev is not None:
            w.sub_(beta * prev)
        w, removed = _orthogonalize(w, basis, row + 1)
        columns.append(removed)
        beta_t = norm(operator, w)
        rounding = basis.rounding(w / beta_t)
        read = (alpha_t, beta_t) if rounding is None else (alpha_t, beta_t, beta_t * rounding)
        alpha, beta, *stored = read_finite(torch.stack(read))  # the step's one sync
        if stored:  # A·q = H·q + β·(q_next − q_next as stored): a coupling T leaves out
            dropped.append((row, stored[0]))
        alphas.append(alpha)
        betas.append(beta)
        T = projected(kept, arrow, alphas, betas)
        values, vectors = torch.linalg.eigh(T)
        top_pairs, bottom_pairs, scale = _ritz(values, vectors, [*dropped, (row, beta)],
                                               min(top, row + 1), min(bottom, row + 1), tol)
        result = LanczosResult(top_pairs, bottom_pairs, step + 1, scale)
        if callback is not None:
            callback(step + 1, sum(top_pairs.converged) + sum(bottom_pairs.converged), wanted)
        if row + 1 == n:
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
            fresh, _ = _orthogonalize(random_unit(), basis, row + 1)
            length = float(norm(operator, fresh))
            if length < 1e-8:
                break
            at_last_breakdown = wanted_now
            first_block = first_block or step + 1
            dropped.append((row, beta))
            betas[-1], beta, prev, q, block_start = 0.0, 0.0, None, fresh / length, step + 1
            continue
        # After a restart, a block must outlast the first one before a stop by convergence:
        # a shorter one may not yet show a repeated copy.
        if (step + 1 >= wanted and complete and result.converged
                and (first_block is None or step + 1 - block_start > first_block)):
            break
        prev, q = q, w.div_(beta_t)
    q = prev = w = None  # the working vectors, before the Ritz vectors take their place
    measured = _measured(result, product, operator.exact(), basis, columns, T, betas[-1],
                         dropped, vectors, values, tol, operator)
    return replace(measured, layout=layout, basis_rows=len(basis.rows))


def _restart(basis: KrylovBasis, values: torch.Tensor, vectors: torch.Tensor, beta: float,
             columns: list[torch.Tensor], couplings: list[tuple[int, float]], T: torch.Tensor,
             top: int, bottom: int, scale: float):
    """Thick restart of a full basis: keep the Ritz vectors y = Q·s of ``_kept``, with their
    values θ and their coupling b = β·s_m to the next vector (A·y = θy + b·q_next + e). What
    their cycle's H knows of e (‖(H − θ)s‖ over the rows kept, the couplings cut, a float32
    basis' rounding of y times 2‖A‖) goes on as each kept row's coupling error."""
    m = basis.size
    index = _kept(m, top, bottom)
    s = vectors[:, index]
    numbers = read_finite(torch.cat(columns))
    H = _arnoldi(numbers, T, beta)
    carried = (torch.linalg.vector_norm(H[:m] @ s - s * values[index], dim=0)
               + _coupling_bound(s, couplings))
    rounding = basis.restart(s).cpu()
    carried = carried + 2 * scale * rounding
    zeros = [torch.zeros(i + 1, dtype=torch.float64, device=basis.device) for i in range(len(index))]
    return (values[index].tolist(), (beta * s[m - 1]).tolist(),
            list(enumerate(carried.tolist())), zeros)


def _arnoldi(numbers: list[float], T: torch.Tensor, beta: float) -> torch.Tensor:
    """H_m ((m+1)×m) of A·Q_m = Q_{m+1}·H_m: column j holds the coefficients of A·q_j on
    q_0..q_{j+1}: the projection T, what the reorthogonalization removed (``numbers``, column by
    column) and the last coupling β."""
    m = len(T)
    cols, rows = torch.tril_indices(m, m)  # column j's rows 0..j, in the order they were stored
    H = torch.zeros(m + 1, m, dtype=torch.float64)
    H[rows, cols] = torch.tensor(numbers, dtype=torch.float64)
    H[:m] += T
    H[m, m - 1] = beta
    return H


def _measured(result: LanczosResult, product: Matvec, exact: LinearOperator | None,
              basis: KrylovBasis, columns: list[torch.Tensor], T: torch.Tensor, beta: float,
              dropped: list[tuple[int, float]], vectors: torch.Tensor, values: torch.Tensor,
              tol: float, operator: LinearOperator) -> LanczosResult:
    """Replace the estimated residuals of the requested pairs by measured ones: column j of
    H_m holds the coefficients of A·q_j on q_0..q_{j+1} (α_j, β_{j−1}, β_j and what the
    reorthogonalization removed; ``_arnoldi``), so ‖Ay − θy‖ = ‖H_m s − θs‖, plus |β_j·s_j| for
    each coupling T leaves out (cut at breakdowns, carried by restarts, a float32 basis'
    rounding). The first wanted pair's residual is also measured with a fresh
    product, or, where ``exact`` (the operator in float64) is given, the first wanted pair's at
    each end with a float64 product (and every other one's where what that found is not
    negligible beside the tolerance: ``CHECKED_SHARE``); the most that adds is the products'
    own error, added to every pair, with the error the checking operator measured in its own products
    (``operator.product_error``). Approximate products (finite differences): ``_refined``."""
    m = len(T)
    top, bottom = len(result.top.values), len(result.bottom.values)
    order_top, order_bottom = _ends(m, top, bottom)
    wanted = [*order_top, *order_bottom]
    if not wanted:
        return result
    s = vectors[:, wanted]
    ritz = basis.ritz(s.T, m)
    ritz.div_(norm(operator, ritz, dim=1, keepdim=True))
    if exact is None and approximate(operator):
        return _refined(result, operator, ritz, tol)
    if exact is None:
        ends = [0]
        image = product(ritz[0])
        fresh_t = norm(operator, image.sub_(float(values[wanted[0]]) * ritz[0]))[None]
    else:
        ends = [i for i, count in ((0, top), (top, bottom)) if count]
        fresh_t = _exact_residuals(exact, operator, ritz, values[wanted], ends)
    numbers = read_finite(torch.cat((*columns, fresh_t)))
    H = _arnoldi(numbers[:len(numbers) - len(ends)], T, beta)
    gap = H @ s  # A·y on q_0..q_m, minus θ·y on q_0..q_{m-1}
    gap[:m] -= s * values[wanted]
    residuals = torch.linalg.vector_norm(gap, dim=0) + _coupling_bound(s, dropped)
    fresh = numbers[len(numbers) - len(ends):]
    rounding = max(0.0, *(f - float(residuals[i]) for f, i in zip(fresh, ends)))
    rest = [i for i in range(len(wanted)) if i not in ends] if exact is not None else []
    limit = tol * max(result.scale, torch.finfo(torch.float64).tiny)
    if rest and rounding > CHECKED_SHARE * limit:
        fresh = read_finite(_exact_residuals(exact, operator, ritz, values[wanted], rest))
        rounding = max(rounding, *(f - float(residuals[i]) for f, i in zip(fresh, rest)))
        ends = ends + rest
    rounding += product_error(exact or operator)  # what approximate products measured of theirs
    measured = (residuals + rounding).tolist()
    return LanczosResult(_pairs(result.top.values, measured[:top], ritz[:top], limit),
                         _pairs(result.bottom.values, measured[top:], ritz[top:], limit),
                         result.steps, result.scale, rounding, checks=len(ends))


def _exact_residuals(exact: LinearOperator, operator: LinearOperator, ritz: torch.Tensor,
                     thetas: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """‖A₆₄y − θy‖ for the Ritz vectors ``rows``, by one block of float64 products."""
    images = exact(ritz[rows]).to(torch.float64)
    for image, i in zip(images, rows):
        image.sub_(float(thetas[i]) * ritz[i])  # in place: a temporary of n at a time
    return norm(operator, images, dim=1)


def _pairs(values: list[float], residuals: list[float], vectors: torch.Tensor,
           limit: float) -> RitzPairs:
    """Ritz pairs with measured residuals, converged where a residual is within ``limit``."""
    return RitzPairs(values=values, residuals=residuals,
                     converged=[r <= limit for r in residuals], vectors=vectors)


def _refined(result: LanczosResult, operator: LinearOperator, ritz: torch.Tensor,
             tol: float) -> LanczosResult:
    """The wanted pairs of an operator with approximate products (finite differences), refined
    by one product of each Ritz vector y whose own error δ_y is measured there
    (``operator.checked``): the value is the Rayleigh quotient θ = yᵀÃy and its residual
    ‖Ãy − θy‖ + δ, δ the largest error measured (``product_error``), since
    ‖Ay − θy‖ ≤ ‖Ãy − θy‖ + ‖(Ã − A)y‖. The steps' products may be far less accurate at these
    vectors than the checked ones (a central difference's truncation grows with the third
    derivative along y), and what they made of T is replaced, not bounded."""
    images = checked(operator, ritz.to(operator.dtype)).to(torch.float64)
    values = summed(operator, (images * ritz).sum(dim=1))
    images.sub_(values[:, None] * ritz)
    numbers = read_finite(torch.cat((values, norm(operator, images, dim=1))))
    del images
    wanted = len(ritz)
    rounding = product_error(operator)
    residuals = [r + rounding for r in numbers[wanted:]]
    limit = tol * max(result.scale, torch.finfo(torch.float64).tiny)
    top = len(result.top.values)
    return LanczosResult(_pairs(numbers[:top], residuals[:top], ritz[:top], limit),
                         _pairs(numbers[top:wanted], residuals[top:], ritz[top:], limit),
                         result.steps, result.scale, rounding, checks=wanted)
