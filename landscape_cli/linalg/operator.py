"""The one thing the algorithms take: a symmetric linear operator A on vectors of ``size`` numbers
(the Hessian behind the HVP engine, a dense matrix in tests), as curvlinops' linear operators
and hessian-eigenthings' ``CurvatureOperator`` are.

An operator maps a block V (k×size) of row vectors to A·vᵢ for each row, computed in ``dtype``
on ``device``; it says how many bytes the algorithm's own vectors may take
(``memory_left()``, None: no limit) and, where its products round in less than float64, gives
the same operator in float64 (``exact()``) so that an algorithm can measure the products' own
error against it. Restricting an operator to some coordinates (a diagonal block) is an operator
too (``restrict``). An operator whose products are approximations (finite differences) says
so (``approximate``), how far off they were (``product_error``), which the algorithms add to
their residuals, and measures that error on every row of a block where asked (``checked``):
an approximation's error depends on the vector (a central difference's on the third derivative
along it), so the vectors a result is reported at get theirs measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric operator on vectors of ``size`` numbers, its products in ``dtype`` on
    ``device``."""

    @property
    def size(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """A·vᵢ for each row vᵢ of ``block`` (k×size)."""

    def memory_left(self) -> int | None:
        """Bytes the algorithm's own vectors may take (None: no limit)."""

    def exact(self) -> LinearOperator | None:
        """The same operator with float64 products where this one's round in less (None where
        they are already float64)."""


@dataclass(frozen=True)
class DenseOperator:
    """A symmetric matrix as an operator, its products computed in ``dtype`` (default the
    matrix's); for tests and for users with a matrix at hand."""

    matrix: torch.Tensor
    products_dtype: torch.dtype | None = None
    memory: int | None = None

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.products_dtype or self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        return block.to(self.dtype) @ self.matrix.to(self.dtype)

    def memory_left(self) -> int | None:
        return self.memory

    def exact(self) -> DenseOperator | None:
        if self.dtype == torch.float64:
            return None
        return DenseOperator(self.matrix.double(), memory=self.memory)


@dataclass(frozen=True)
class CallableOperator:
    """An operator from a function of a block (k×size) of rows, as scipy's ``LinearOperator``
    is made from a matvec."""

    function: Callable[[torch.Tensor], torch.Tensor]
    size: int
    dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"
    memory: int | None = None
    reference: LinearOperator | None = None

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        return self.function(block)

    def memory_left(self) -> int | None:
        return self.memory

    def exact(self) -> LinearOperator | None:
        return self.reference


def approximate(operator: LinearOperator) -> bool:
    """Whether ``operator``'s products are approximations with a measured error (its optional
    ``approximate``)."""
    return bool(getattr(operator, "approximate", False))


def checked(operator: LinearOperator, block: torch.Tensor) -> torch.Tensor:
    """A·vᵢ for each row, each row's error measured into ``product_error`` where the products
    are approximate (the operator's optional ``checked``), else its plain products."""
    measure = getattr(operator, "checked", None)
    return operator(block) if measure is None else measure(block)


def rayleigh_error(operator: LinearOperator) -> float:
    """The largest error of a Rayleigh quotient vᵀÃv/vᵀv that ``operator`` measured (its
    optional ``rayleigh_error()``; else its ``product_error``, which bounds it)."""
    measured = getattr(operator, "rayleigh_error", None)
    return product_error(operator) if measured is None else measured()


def product_error(operator: LinearOperator) -> float:
    """The largest error ‖Ãv − Av‖ per unit vector that ``operator`` measured in its products so
    far (its optional ``product_error()``; 0 for operators whose products are exact up to the
    rounding the algorithms measure themselves)."""
    measured = getattr(operator, "product_error", None)
    return 0.0 if measured is None else measured()


class Wrapping:
    """An operator that is ``self.operator`` in all but what a subclass overrides (its products,
    its size): the size, dtype, device, memory and float64 reference are the wrapped one's."""

    operator: LinearOperator

    @property
    def size(self) -> int:
        return self.operator.size

    @property
    def dtype(self) -> torch.dtype:
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.operator.device

    def memory_left(self) -> int | None:
        return self.operator.memory_left()

    def exact(self) -> LinearOperator | None:
        return self.operator.exact()

    def product_error(self) -> float:
        """The wrapped operator's (a restriction's products are its products, cut down)."""
        return product_error(self.operator)

    def rayleigh_error(self) -> float:
        return rayleigh_error(self.operator)

    @property
    def approximate(self) -> bool:
        return approximate(self.operator)

    def checked(self, block: torch.Tensor) -> torch.Tensor:
        """The wrapped operator's products, each row's error measured (``checked``)."""
        return checked(self.operator, block)

    @property
    def shards(self) -> object:
        """How the wrapped operator's vectors are held (``linalg/shards.py``)."""
        return getattr(self.operator, "shards", None)


@dataclass(frozen=True)
class Restricted(Wrapping):
    """The diagonal block of an operator on the coordinates ``index``: v ↦ (A·[v]_g)_g, a view
    (each product is one product of the whole operator)."""

    operator: LinearOperator
    index: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.index)

    #: a diagonal block of whole vectors (sharded operators are never restricted)
    shards = None

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        return self.operator(self._embedded(block))[:, self.index]

    def checked(self, block: torch.Tensor) -> torch.Tensor:
        return checked(self.operator, self._embedded(block))[:, self.index]

    def _embedded(self, block: torch.Tensor) -> torch.Tensor:
        full = block.new_zeros(block.shape[0], self.operator.size)
        full[:, self.index] = block
        return full

    def exact(self) -> Restricted | None:
        exact = self.operator.exact()
        return None if exact is None else Restricted(exact, self.index)


def restrict(operator: LinearOperator, slices: list[slice]) -> Restricted:
    """``operator``'s diagonal block on the coordinates of ``slices``."""
    index = torch.cat([torch.arange(s.start, s.stop) for s in slices]).to(operator.device)
    return Restricted(operator, index)
