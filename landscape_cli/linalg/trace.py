"""Stochastic trace estimation with its own error bar.

Hutchinson (1989): tr(A) = E[zᵀAz] for Rademacher z; the mean of p probes has standard error
s/√p. Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with Q an orthonormal basis of A·S for a
Rademacher sketch S, tr(A) = tr(QᵀAQ) + tr((I−QQᵀ)A(I−QQᵀ)); the first term is exact and the
second, estimated à la Hutchinson, has the variance of A with its top directions removed, so a
decaying spectrum needs far fewer probes. Probes go through the operator in blocks (k, n); both
estimators stop once the standard error is within ``rtol``·|estimate| or the budget is spent.
After each block, ``callback(matvecs, estimate)`` receives the estimate so far (not converged):
a progress display shows it, and an interrupted run can report it. Where the products are
approximate with a measured error δ of their Rayleigh quotients (finite differences,
``operator.rayleigh_error``), a sample moves by |zᵀ(Ã−A)z| ≤ ‖z‖²·δ = n·δ, and tr(QᵀÃQ) by
k·δ: that bound (``bias_bound``) widens the 95% interval, since a systematic error does not
average out over probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape_cli.linalg.host import read_finite
from landscape_cli.linalg.memory import hutchpp_bytes, no_memory
from landscape_cli.linalg.operator import LinearOperator, rayleigh_error
from landscape_cli.linalg.probes import rademacher
from landscape_cli.linalg.shards import dimension, drawn, matmul, shards_of, summed

Callback = Callable[[int, "TraceEstimate"], None]

#: Student's t quantile t_{0.975, df} for df = 1..30; beyond, t ≈ 1.96 + 2.4/df (within 0.1%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclass
class TraceEstimate:
    """An estimate of tr(A), its standard error and 95% interval, and what it cost."""

    trace: float
    stderr: float
    ci95: tuple[float, float]
    probes: int
    matvecs: int
    method: str
    sketch: int
    converged: bool
    #: the most the products' measured error can move the estimate (0 for exact products)
    bias_bound: float = 0.0


def _probe_loop(operator: LinearOperator, offset: float, project, *, rtol: float, budget: int,
                block: int, min_probes: int, generator: torch.Generator,
                callback: Callback | None, method: str, sketch: int,
                spent_before: int = 0) -> tuple[list[float], int, bool]:
    """Hutchinson samples gᵀP A P g (P = ``project``) until the stopping rule holds."""
    samples: list[float] = []
    spent = 0
    converged = False
    while spent < budget:
        probes = project(_probes(operator, min(block, budget - spent), generator))
        samples += read_finite(summed(operator, (probes * operator(probes)).sum(dim=1)))
        spent += probes.shape[0]
        if callback is not None:
            callback(spent_before + spent,
                     _estimate(offset, samples, spent_before + spent, method, sketch, False))
        if len(samples) >= max(2, min_probes):
            mean = sum(samples) / len(samples)
            if _stderr(samples) <= rtol * abs(offset + mean):
                converged = True
                break
    return samples, spent, converged


def _stderr(samples: list[float]) -> float:
    p = len(samples)
    if p < 2:
        return math.inf
    mean = sum(samples) / p
    return math.sqrt(sum((x - mean) ** 2 for x in samples) / (p - 1) / p)


def _estimate(offset: float, samples: list[float], matvecs: int, method: str, sketch: int,
              converged: bool, bias_bound: float = 0.0) -> TraceEstimate:
    mean = sum(samples) / len(samples) if samples else 0.0
    stderr = _stderr(samples) if samples else 0.0
    half = t975(len(samples) - 1) * stderr if len(samples) > 1 else (math.inf if samples else 0.0)
    value = offset + mean
    half += bias_bound
    return TraceEstimate(trace=value, stderr=stderr, ci95=(value - half, value + half),
                         probes=len(samples), matvecs=matvecs, method=method, sketch=sketch,
                         converged=converged, bias_bound=bias_bound)


def _bias_bound(operator: LinearOperator, sketch: int, probed: bool = True) -> float:
    """k·δ + n·δ: the most products whose Rayleigh quotients have a measured error δ can move
    an estimate with a sketch of k and (where ``probed``) probes (module docstring)."""
    return (sketch + (dimension(operator) if probed else 0)) * rayleigh_error(operator)


def independent_columns(r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Columns of a QR factor R that are numerically independent: |rᵢᵢ| > √ε·max|rⱼⱼ|. Not n·ε:
    products carry rounding far above ε anyway, and n·ε exceeds 1 in float32 once n ≥ 2²³,
    which would drop every direction of a large model's sketch."""
    diagonal = r.diagonal().abs()
    return diagonal > torch.finfo(dtype).eps ** 0.5 * diagonal.max()


def _probes(operator: LinearOperator, k: int, generator: torch.Generator) -> torch.Tensor:
    """k Rademacher probes, drawn whole (this rank's pieces where the vectors are sharded)."""
    return drawn(operator, lambda size: rademacher(k, size, generator, operator.dtype,
                                                   operator.device))


def orthonormal_rows(operator: LinearOperator, images: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the numerically independent ones of ``images`` (k×n): by
    Householder QR of a whole block; of a sharded one (rows split over the ranks) from its Gram
    matrix G = YYᵀ summed over the ranks, G = VΛVᵀ, Q = Λ^(-1/2)VᵀY over the eigenvalues above
    ε·max (singular values above √ε·max, as ``independent_columns``), done twice, since one
    pass leaves a loss of orthogonality of ε·cond(Y)² (CholeskyQR2: Fukaya et al. 2014)."""
    if shards_of(operator) is None:
        q, r = torch.linalg.qr(images.T)
        return q[:, independent_columns(r, images.dtype)].T.contiguous()
    rows = images
    for _ in range(2):
        values, vectors = torch.linalg.eigh(matmul(operator, rows, rows.T).double())
        kept = values > torch.finfo(images.dtype).eps * values.max()
        scale = (vectors[:, kept] / values[kept].sqrt()).T.to(rows.dtype)
        rows = scale @ rows
    return rows.contiguous()


def fitting(operator: LinearOperator, sketch: int, block: int) -> tuple[int, int]:
    """The sketch and probe block whose vectors (``memory.hutchpp_bytes``) fit the operator's
    ``memory_left()``: the block shrinks first (it only batches products), then the sketch;
    ``NoMemory`` where one probe at a time does not fit (0: the least, never refused)."""
    n, itemsize, memory = operator.size, operator.dtype.itemsize, operator.memory_left()
    if memory is None or hutchpp_bytes(n, sketch, block, itemsize) <= memory:
        return sketch, block
    least = hutchpp_bytes(n, 0, 1, itemsize)
    if 0 < memory < least:
        raise no_memory(f"The trace of {n:,} parameters (one probe and its product)", least,
                        memory)
    while block > 1 and hutchpp_bytes(n, sketch, block, itemsize) > memory:
        block //= 2
    while sketch > 0 and hutchpp_bytes(n, sketch, block, itemsize) > memory:
        sketch //= 2
    return sketch, block


def hutchinson(operator: LinearOperator, *, rtol: float = 0.01, max_matvecs: int = 1000,
               block: int = 8, min_probes: int = 10, generator: torch.Generator,
               callback: Callback | None = None) -> TraceEstimate:
    """Hutchinson's estimator: the mean of zᵀAz over Rademacher probes z (in blocks that fit the
    operator's memory, ``fitting``)."""
    _, block = fitting(operator, 0, block)
    samples, spent, converged = _probe_loop(
        operator, 0.0, lambda g: g, rtol=rtol, budget=max_matvecs, block=block,
        min_probes=min_probes, generator=generator, callback=callback,
        method="hutchinson", sketch=0)
    return _estimate(0.0, samples, spent, "hutchinson", 0, converged, _bias_bound(operator, 0))


def hutchpp(operator: LinearOperator, *, rtol: float = 0.01, max_matvecs: int = 1000,
            sketch: int | None = None, block: int = 8, min_probes: int = 10,
            generator: torch.Generator,
            callback: Callback | None = None) -> TraceEstimate:
    """Hutch++: exact trace on the sketched top subspace, Hutchinson on the rest.

    ``sketch`` vectors (default: a third of the budget when ``rtol`` is 0, as in the paper's
    fixed-budget form; else min(24, budget/3); fewer where they do not fit the operator's
    memory, ``fitting``) cost 2·sketch matvecs; the rest go to probes.
    """
    n, dtype, device = dimension(operator), operator.dtype, operator.device
    if sketch is None:
        sketch = max_matvecs // 3 if rtol == 0 else min(24, max_matvecs // 3)
    sketch, block = fitting(operator, max(0, min(sketch, n, max_matvecs // 2)), block)
    offset, spent = 0.0, 0
    basis = torch.zeros(0, operator.size, dtype=dtype, device=device)
    if sketch > 0:
        basis = orthonormal_rows(operator, operator(_probes(operator, sketch, generator)))
        offset = read_finite(summed(operator, (basis * operator(basis)).sum()))[0] if len(basis) else 0.0
        spent = sketch + len(basis)

    if len(basis) == n:  # the sketch spans everything: tr(QᵀAQ) is exact
        return _estimate(offset, [], spent, "hutchpp", n, True, _bias_bound(operator, n, False))

    def project(g: torch.Tensor) -> torch.Tensor:
        return g - matmul(operator, g, basis.T) @ basis if len(basis) else g

    samples, used, converged = _probe_loop(
        operator, offset, project, rtol=rtol, budget=max_matvecs - spent, block=block,
        min_probes=min_probes, generator=generator, callback=callback,
        method="hutchpp", sketch=len(basis), spent_before=spent)
    return _estimate(offset, samples, spent + used, "hutchpp", len(basis), converged,
                     _bias_bound(operator, len(basis)))
