"""Directions and planes in parameter space for ``interpolate --plane`` (issue 20, item 4).

Everything here is tensor code on flat parameter vectors: the problem's parameters ``names``
with shapes ``shapes``, flattened and concatenated in that order (``Problem.unflatten``).

* ``random_direction``: a Gaussian direction with Li et al. 2018's filter (or layer)
  normalisation, drawn as their code draws it (``net_plotter.py``: one ``randn`` per parameter
  tensor, then ``normalize_directions_for_weights``), on the CPU in float64 from a seeded
  generator, so that a seed names the same direction on every device and in every dtype.
* ``Plane``: an origin and two axes ``u``, ``v``; ``plane_through`` (Garipov et al. 2018's plane
  through three checkpoints, by Gram-Schmidt), ``random_plane`` (two random directions around
  one checkpoint), ``points`` (the weights at the nodes of a grid).

Planes are saved and loaded by ``analyses.plane_file``; ``--grid`` is parsed by ``grids``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from landscape_cli.errors import LandscapeError
from landscape_cli.results.interpolate import IGNORES, NORMALIZATIONS

#: What spans a plane: three checkpoints, random directions, top Hessian eigenvectors.
BASES = ("checkpoints", "random", "hessian", "pca")

#: Li et al.'s guard against a zero direction filter (``d.norm() + 1e-10``).
_FILTER_EPS = 1e-10

Shapes = Sequence[Sequence[int]]


# ----------------------------------------------------------------------------- directions


def _check_option(value: str, option: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        choices = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise LandscapeError(f"{option} {value}: unknown value; choose {choices}")


def check_options(normalize: str, ignore: str) -> None:
    """Refuse an unknown ``--normalize`` or ``--ignore`` (LandscapeError, one line)."""
    _check_option(normalize, "--normalize", NORMALIZATIONS)
    _check_option(ignore, "--ignore", IGNORES)


def sizes(names: Sequence[str], shapes: Shapes) -> list[int]:
    if len(names) != len(shapes):
        raise ValueError(f"{len(names)} parameter names but {len(shapes)} shapes")
    return [math.prod(shape) for shape in shapes]


def random_direction(names: Sequence[str], shapes: Shapes, weights: torch.Tensor,
                     generator: torch.Generator, *, normalize: str = "filter",
                     ignore: str = "biasbn", dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """A random direction in the flat parameter space, normalised to ``weights`` (flat).

    One standard Gaussian tensor per parameter, drawn on the CPU in float64 from ``generator``
    (a CPU generator), tensor by tensor in ``names`` order, every tensor drawn whatever
    ``ignore`` says (so that a seed's directions for the weight tensors do not depend on it).
    Then, as Li et al.'s ``normalize_directions_for_weights``:

    * a tensor with two or more dimensions: ``filter`` rescales each output filter (each index
      along dim 0: a conv filter, a row of a linear layer) to the norm of the matching weight
      filter, ``d_i · ‖w_i‖ / (‖d_i‖ + 1e-10)``; ``layer`` rescales the whole tensor to the
      weight tensor's norm; ``none`` leaves it as drawn;
    * a tensor with at most one dimension (a bias, a normalisation layer's weight or bias):
      ``ignore="biasbn"`` sets it to exactly zero; ``ignore="none"`` copies the weights under
      ``filter`` (Li et al.'s ``d.copy_(w)``: each entry is its own filter), rescales it like a
      layer under ``layer``, leaves it as drawn under ``none``.

    Returns a flat tensor in ``dtype`` on ``device`` (by default those of ``weights``).
    """
    check_options(normalize, ignore)
    counts = sizes(names, shapes)
    if weights.dim() != 1 or weights.numel() != sum(counts):
        raise ValueError(f"weights of shape {list(weights.shape)} for {sum(counts)} parameters")
    host = weights.detach().to(device="cpu", dtype=torch.float64)
    pieces = []
    for shape, w in zip(shapes, host.split(counts)):
        w = w.view(tuple(shape))
        d = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
        pieces.append(_normalized(d, w, normalize, ignore).reshape(-1))
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    return flat.to(device=weights.device if device is None else device,
                  dtype=weights.dtype if dtype is None else dtype)


def _normalized(d: torch.Tensor, w: torch.Tensor, normalize: str, ignore: str) -> torch.Tensor:
    """One tensor's direction ``d`` normalised to its weights ``w`` (both float64, CPU)."""
    if d.dim() <= 1:
        if ignore == "biasbn":
            return torch.zeros_like(d)
        if normalize == "filter":
            return w.clone()
        return _layer(d, w) if normalize == "layer" else d
    if normalize == "filter":
        if d.shape[0] == 0:
            return d
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + _FILTER_EPS)
        return d * scale.view(-1, *([1] * (d.dim() - 1)))
    return _layer(d, w) if normalize == "layer" else d


def _layer(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    norm = d.norm()
    return d * (w.norm() / norm) if norm > 0 else torch.zeros_like(d)


# ----------------------------------------------------------------------------- planes


@dataclass(frozen=True, eq=False)
class Plane:
    """The affine plane ``origin + x·u + y·v`` in the flat parameter space, and what made it.

    ``basis``: ``checkpoints`` (``plane_through``), ``random`` (``random_plane``) or ``hessian``
    (``u``, ``v`` the top two Hessian eigenvectors, built by the caller). ``seed``,
    ``normalize`` and ``ignore`` are those of a random plane (None otherwise); ``names`` and
    ``shapes`` are the parameters the flat vectors stand for, in order.
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    basis: str
    seed: int | None = None
    normalize: str | None = None
    ignore: str | None = None
    names: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        if self.basis not in BASES:
            raise ValueError(f"basis {self.basis!r}: not one of {', '.join(BASES)}")
        if self.origin.dim() != 1 or self.u.shape != self.origin.shape \
                or self.v.shape != self.origin.shape:
            raise ValueError(f"origin, u and v must be flat and of one length, not "
                             f"{list(self.origin.shape)}, {list(self.u.shape)}, {list(self.v.shape)}")
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "shapes", tuple(tuple(int(s) for s in shape)
                                                 for shape in self.shapes))
        if self.names and sum(sizes(self.names, self.shapes)) != self.origin.numel():
            raise ValueError(f"{self.origin.numel()} coordinates for parameters of "
                             f"{sum(sizes(self.names, self.shapes))} elements")

    @property
    def n(self) -> int:
        return self.origin.numel()

    def around(self, origin: torch.Tensor) -> Plane:
        """The same directions through ``origin``."""
        return dataclasses.replace(self, origin=origin)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64, on the CPU where its device has no float64 (MPS)."""
    t = t.detach()
    return t.cpu().double() if t.device.type == "mps" else t.double()


def plane_through(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *,
                  labels: Sequence[str] = ("a", "b", "c"), names: Sequence[str] = (),
                  shapes: Shapes = ()) -> tuple[Plane, dict[str, tuple[float, float]]]:
    """Garipov et al. 2018's plane through three weight vectors, by Gram-Schmidt.

    Origin ``a``; ``u = b − a``; ``v`` the component of ``c − a`` orthogonal to ``u``, rescaled
    to ``‖u‖`` (both axes in one unit). Returns the plane and the coordinates of the three
    vectors, keyed by ``labels``: a = (0, 0), b = (1, 0), c = (⟨c−a, u⟩/‖u‖², ⟨c−a, v⟩/‖v‖²).
    The arithmetic is float64; ``u`` and ``v`` come back in ``a``'s dtype and on its device.
    Refuses (LandscapeError, one line) ``a = b`` and a ``c`` on the line through ``a`` and ``b``.
    """
    if len(labels) != 3 or len(set(labels)) != 3:
        raise ValueError(f"three distinct labels needed, not {list(labels)}")
    if not (a.dim() == 1 and a.shape == b.shape == c.shape):
        raise ValueError(f"three flat vectors of one length needed, not {list(a.shape)}, "
                         f"{list(b.shape)}, {list(c.shape)}")
    la, lb, lc = labels
    a64 = _wide(a)
    b64, c64 = _wide(b).to(a64.device), _wide(c).to(a64.device)
    u = b64 - a64
    w = c64 - a64
    u_norm = u.norm()
    scale = max(a64.norm().item(), b64.norm().item(), c64.norm().item())
    if u_norm.item() <= 1e-12 * scale or u_norm.item() == 0.0:
        raise LandscapeError(f"--plane: {la} and {lb} are the same weights; a plane needs three "
                             "checkpoints not on one line")
    uu = u.dot(u)
    x_c = (w.dot(u) / uu).item()
    r = w - x_c * u
    r_norm = r.norm().item()
    # rounding in the inputs' own dtype makes a point on the line look a little off it
    eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
    noise = 10 * eps * (a64.norm() + b64.norm() + c64.norm()).item()
    if r_norm <= max(1e-6 * max(u_norm.item(), w.norm().item()), noise):
        raise LandscapeError(f"--plane: {lc} lies on the line through {la} and {lb} (its distance "
                             f"from the line is {r_norm / u_norm.item():.1e} of the distance from "
                             f"{la} to {lb}); a plane needs three checkpoints not on one line")
    v = r * (u_norm / r_norm)
    y_c = (w.dot(v) / v.dot(v)).item()
    plane = Plane(origin=a.detach(), u=u.to(device=a.device, dtype=a.dtype),
                  v=v.to(device=a.device, dtype=a.dtype), basis="checkpoints",
                  names=tuple(names), shapes=tuple(tuple(s) for s in shapes))
    return plane, {la: (0.0, 0.0), lb: (1.0, 0.0), lc: (x_c, y_c)}


@dataclass(frozen=True)
class Trajectory:
    """A run's checkpoints seen in its PCA plane: each one's coordinates, its distance off the
    plane, and the share of the differences' squared norm each direction explains."""

    plane: Plane
    coordinates: dict[str, tuple[float, float]]
    off_plane: dict[str, float]
    explained_variance: list[float]


def pca_plane(thetas: Sequence[torch.Tensor], labels: Sequence[str], *, names: Sequence[str] = (),
              shapes: Shapes = ()) -> Trajectory:
    """Li et al. 2018 (Fig. 9): the plane through the last of ``thetas`` spanned by the top two
    principal directions of the others' differences from it, D = [θᵢ − θ_last], found from the
    m × m Gram matrix DDᵀ (float64): u, v the unit right singular vectors. Refuses fewer than
    three checkpoints, or differences that span less than a plane."""
    if len(thetas) < 3:
        raise LandscapeError(f"--directions pca needs three or more checkpoints of one run; got "
                             f"{len(thetas)}")
    final = _wide(thetas[-1])
    differences = torch.stack([_wide(t).to(final.device) - final for t in thetas[:-1]])
    values, vectors = torch.linalg.eigh(differences @ differences.T)
    order = values.argsort(descending=True)
    values, vectors = values[order].clamp(min=0), vectors[:, order]
    if values.numel() < 2 or values[1] <= 1e-12 * values[0]:
        raise LandscapeError("--directions pca: the checkpoints' differences from the last span "
                             "less than a plane (one line, or all the same weights)")
    u, v = (differences.T @ vectors[:, k] / values[k].sqrt() for k in (0, 1))
    coordinates = {label: (float(d @ u), float(d @ v)) for label, d in zip(labels, differences)}
    off_plane = {label: float((d - (d @ u) * u - (d @ v) * v).norm())
                 for label, d in zip(labels, differences)}
    coordinates[labels[-1]], off_plane[labels[-1]] = (0.0, 0.0), 0.0
    total = float(values.sum())
    plane = Plane(origin=thetas[-1].detach(), u=u.to(thetas[-1]), v=v.to(thetas[-1]), basis="pca",
                  names=tuple(names), shapes=tuple(tuple(s) for s in shapes))
    return Trajectory(plane, coordinates, off_plane, [float(values[0]) / total, float(values[1]) / total])


def random_plane(center: torch.Tensor, names: Sequence[str], shapes: Shapes, seed: int,
                 normalize: str = "filter", ignore: str = "biasbn") -> Plane:
    """Two random directions around ``center`` (``random_direction``), both from one CPU
    generator seeded with ``seed``: ``u`` drawn first, then ``v``."""
    check_options(normalize, ignore)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    u = random_direction(names, shapes, center, generator, normalize=normalize, ignore=ignore)
    v = random_direction(names, shapes, center, generator, normalize=normalize, ignore=ignore)
    return Plane(origin=center.detach(), u=u, v=v, basis="random", seed=int(seed),
                 normalize=normalize, ignore=ignore, names=tuple(names),
                 shapes=tuple(tuple(s) for s in shapes))


def points(plane: Plane, xs: Sequence[float] | torch.Tensor,
           ys: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The weights ``origin + x·u + y·v`` at every node of the grid ``xs`` × ``ys``, shape
    ``(len(ys)·len(xs), n)``, row-major over y then x: row ``i·len(xs) + j`` is
    ``(xs[j], ys[i])``, so that losses at these rows reshape to a grid with
    ``values.view(len(ys), len(xs))``."""
    origin = plane.origin
    x = torch.as_tensor(xs, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(ys, dtype=torch.float64).reshape(-1)
    gx = x.repeat(len(y)).to(device=origin.device, dtype=origin.dtype)
    gy = y.repeat_interleave(len(x)).to(device=origin.device, dtype=origin.dtype)
    return origin + gx[:, None] * plane.u + gy[:, None] * plane.v
