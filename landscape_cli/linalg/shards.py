"""Vectors held as shards across the ranks of a torchrun launch (a model sharded with FSDP2,
issue 28): each rank holds some pieces of every vector, its products are its pieces of the
whole product, and every reduction an algorithm makes (a dot product, a norm, the coefficients
of a projection) is the sum of the ranks' partial ones, one all-reduce.

An operator says how its vectors are held by an optional ``shards`` attribute (``Shards``);
without one (or None) a vector is whole in one process, and these functions are the plain
torch ones, bit for bit. Random vectors are drawn whole, from the same generator on every rank,
and each rank keeps its pieces: the same seed gives the same vectors, hence the same numbers up
to summation order, however many ranks hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shards:
    """This rank's ``pieces`` of vectors of ``size`` numbers (slices of the whole vector, in the
    order the local vector holds them), and the sum over the ranks (an all-reduce)."""

    size: int
    pieces: tuple[slice, ...]
    all_sum: Callable[[torch.Tensor], torch.Tensor]

    def local(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's pieces of ``whole`` (…, size), along the last dimension."""
        return torch.cat([whole[..., piece] for piece in self.pieces], dim=-1)


def shards_of(operator: object) -> Shards | None:
    """How ``operator``'s vectors are held (None: whole, in this process)."""
    return getattr(operator, "shards", None)


def dimension(operator: object) -> int:
    """The length of the whole vectors: what the mathematics sees (the operator's ``size`` is
    this rank's share, what its memory holds)."""
    shards = shards_of(operator)
    return operator.size if shards is None else shards.size


def summed(operator: object, partial: torch.Tensor) -> torch.Tensor:
    """``partial`` added up over the ranks that hold ``operator``'s vectors (itself where they
    are whole)."""
    shards = shards_of(operator)
    return partial if shards is None else shards.all_sum(partial.clone())


def dot(operator: object, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀb of two whole vectors held as ``operator``'s are."""
    return summed(operator, torch.dot(a, b))


def matmul(operator: object, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """rows·w, contracting over the vectors' (sharded) last dimension."""
    return summed(operator, rows @ w)


def norm(operator: object, v: torch.Tensor, dim: int | None = None, keepdim: bool = False,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """‖v‖₂ (over ``dim``: the vectors' last dimension) of vectors held as ``operator``'s,
    computed in ``dtype`` where given."""
    if shards_of(operator) is None:
        return torch.linalg.vector_norm(v, dim=dim, keepdim=keepdim, dtype=dtype)
    squares = torch.linalg.vector_norm(v, dim=dim, keepdim=keepdim, dtype=dtype) ** 2
    return summed(operator, squares).sqrt()


def drawn(operator: object, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``draw(n)`` (random rows of n numbers, from a generator) for the whole vectors, and this
    rank's pieces of them."""
    shards = shards_of(operator)
    return draw(operator.size) if shards is None else shards.local(draw(shards.size))
