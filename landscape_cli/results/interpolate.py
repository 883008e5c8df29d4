"""``interpolate``'s result: the loss (and accuracy) along a line, a Bézier curve, every pair of
several checkpoints, or over a plane, with the barriers of each convention named apart
(DESIGN §6)."""

from __future__ import annotations

from typing import ClassVar

from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.rows import Each, Rows

#: the shapes of path ``interpolate`` evaluates
PATHS = ("line", "curve", "pairs", "plane")
#: ``--normalize``: a random direction scaled per output filter (Li et al. 2018), per
#: parameter tensor, or not at all; ``--ignore``: zero the directions of tensors with at most
#: one dimension (biases, normalisation parameters), or keep them
NORMALIZATIONS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")


class Point(Result):
    """One point of a path: α (t for a curve), the dataset loss and accuracy there."""

    alpha: float = reported(required=True)
    loss: float | None = reported(required=True)
    accuracy: float | None = reported(omit_none=True, default=None)


class Barriers(Result):
    """The endpoints' losses and the barriers of a path over α ∈ [0, 1]:
    ``barrier`` = max L(θ(α)) − ((1−α)L_A + αL_B) (Frankle et al. 2020), ``barrier_mid_ends`` =
    max L(θ(α)) − ½(L_A + L_B) (Ainsworth et al. 2023), ``error_barrier`` the first on 1 − accuracy;
    ``alpha_max`` where ``barrier`` peaks."""

    loss_a: float | None = reported(gate=True)
    loss_b: float | None = reported(gate=True)
    barrier: float | None = reported(gate=True, required=True)
    barrier_mid_ends: float | None = reported(gate=True)
    alpha_max: float | None = reported()
    error_barrier: float | None = reported(gate=True, omit_none=True, default=None)


class Curve(Result, kw_only=True):
    """The path between checkpoints ``a`` and ``b`` (indices into ``checkpoints``)."""

    a: int = reported()
    b: int = reported()
    barrier: float | None = reported()
    barrier_mid_ends: float | None = reported()
    alpha_max: float | None = reported()
    error_barrier: float | None = reported(omit_none=True, default=None)
    points: list[Point] = reported()


class Plane(Result, kw_only=True):
    """The loss over a grid in a plane: ``loss[i][j]`` at (``x[j]``, ``y[i]``), the checkpoints'
    ``coordinates``, and the ``directions`` spanning it (``checkpoints``, ``random``,
    ``hessian`` or ``pca``) with what produced them."""

    x: list[float] = reported(required=True)
    y: list[float] = reported(required=True)
    loss: list[list[float | None]] = reported(required=True)
    accuracy: list[list[float | None]] | None = reported(omit_none=True, default=None)
    coordinates: dict[str, tuple[float, float]] = reported(required=True)
    directions: str = reported(required=True)
    normalize: str | None = reported(omit_none=True, default=None)
    ignore: str | None = reported(omit_none=True, default=None)
    seed: int | None = reported(omit_none=True, default=None)
    eigenvalues: list[float] | None = reported(omit_none=True, default=None)
    #: ``--directions pca``: each direction's share of the differences' squared norm, the
    #: checkpoints' coordinates in training order, and each one's distance off the plane
    explained_variance: list[float] | None = reported(omit_none=True, default=None)
    trajectory: list[tuple[float, float]] | None = reported(omit_none=True, default=None)
    off_plane: dict[str, float] | None = reported(omit_none=True, default=None)


class InterpolateResult(Result, kw_only=True):
    """What ``interpolate`` measured; the keys of the path it ran."""

    DERIVED_GATES: ClassVar[tuple[str, ...]] = ("max_barrier",)
    ROWS: ClassVar[tuple[Rows, ...]] = (
        Each("points", ("alpha", "loss", "accuracy")),
        Each("curves", ("a", "b", "barrier", "barrier_mid_ends", "alpha_max", "error_barrier")))

    path: str = reported(required=True)
    checkpoints: list[str] = reported(required=True)
    recalibrate_bn: bool = reported()
    via: str | None = reported(omit_none=True, default=None)
    barriers: Barriers | None = internal(default=None)
    points: list[Point] | None = reported(omit_none=True, default=None)
    eval_points: list[Point] | None = reported(omit_none=True, default=None)
    loss_a: float | None = reported(gate=True, omit_none=True, init=False)
    loss_b: float | None = reported(gate=True, omit_none=True, init=False)
    barrier: float | None = reported(gate=True, omit_none=True, init=False)
    barrier_mid_ends: float | None = reported(gate=True, omit_none=True, init=False)
    alpha_max: float | None = reported(omit_none=True, init=False)
    error_barrier: float | None = reported(gate=True, omit_none=True, init=False)
    eval_barrier: float | None = reported(gate=True, omit_none=True, default=None)
    barrier_unaligned: float | None = reported(gate=True, omit_none=True, default=None)
    barrier_matrix: list[list[float | None]] | None = reported(omit_none=True, default=None)
    curves: list[Curve] | None = reported(omit_none=True, default=None)
    plane: Plane | None = reported(omit_none=True, default=None)
    alignment: dict[str, int] | None = reported(omit_none=True, default=None)
    notes: list[str] = internal(default_factory=list)

    def __post_init__(self) -> None:
        b = self.barriers
        for key in ("loss_a", "loss_b", "barrier", "barrier_mid_ends", "alpha_max", "error_barrier"):
            setattr(self, key, None if b is None else getattr(b, key))

    def derived_scalars(self) -> dict[str, float]:
        values = [v for row in self.barrier_matrix or [] for v in row if v is not None]
        return {"max_barrier": max(values)} if values else {}

    def warnings(self) -> list[str]:
        return list(self.notes)
