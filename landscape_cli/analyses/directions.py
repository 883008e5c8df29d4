"""Directions and planes in parameter space for ``interpolate --plane`` (issue 20, item 4).

Everything here is tensor code on flat parameter vectors: the problem's parameters ``names``
with shapes ``shapes``, flattened and concatenated in that order (``Problem.unflatten``).

* ``random_direction``: a Gaussian direction with Li et al. 2018's filter (or layer)
  normalisation, drawn as their code draws it (``net_plotter.py``: one ``randn`` per parameter
  tensor, then ``normalize_directions_for_weights``), on the CPU in float64 from a seeded
  generator, so that a seed names the same direction on every device and in every dtype.
* ``Plane``: an origin and two axes ``u``, ``v``; ``plane_through`` (Garipov et al. 2018's plane
  through three checkpoints, by Gram-Schmidt), ``random_plane`` (two random directions around
  one checkpoint), ``points`` (the weights at the nodes of a grid), ``save_plane`` and
  ``load_plane`` (a safetensors file, so that a plane can be redrawn or compared across
  checkpoints).
* ``parse_grid``: the ``start:stop:num`` syntax of ``--grid`` and ``--alphas``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from landscape_cli.errors import LandscapeError
from landscape_cli.report.output import Destination, destination, write_file
from landscape_cli.results.interpolate import IGNORES, NORMALIZATIONS

#: What spans a plane: three checkpoints, random directions, top Hessian eigenvectors.
BASES = ("checkpoints", "random", "hessian")

#: Li et al.'s guard against a zero direction filter (``d.norm() + 1e-10``).
_FILTER_EPS = 1e-10
#: ``format`` in the metadata of a file ``save_plane`` writes.
_FORMAT = "landscape-directions"
_VERSION = "1"
#: ``parse_grid`` refuses more points than this per axis (a typo, not a grid).
MAX_GRID_POINTS = 1_000_000

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


def _sizes(names: Sequence[str], shapes: Shapes) -> list[int]:
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
    sizes = _sizes(names, shapes)
    if weights.dim() != 1 or weights.numel() != sum(sizes):
        raise ValueError(f"weights of shape {list(weights.shape)} for {sum(sizes)} parameters")
    host = weights.detach().to(device="cpu", dtype=torch.float64)
    pieces = []
    for shape, w in zip(shapes, host.split(sizes)):
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
        if self.names and sum(_sizes(self.names, self.shapes)) != self.origin.numel():
            raise ValueError(f"{self.origin.numel()} coordinates for parameters of "
                             f"{sum(_sizes(self.names, self.shapes))} elements")

    @property
    def n(self) -> int:
        return self.origin.numel()


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


# ----------------------------------------------------------------------------- files


def save_plane(plane: Plane, path: Path | str | Destination,
               inputs: Iterable[Path | str] = ()) -> None:
    """Write ``plane`` as a safetensors file: tensors ``origin``, ``u``, ``v`` and metadata
    ``format``, ``version``, ``basis``, ``seed``, ``normalize``, ``ignore``, ``names`` and
    ``shapes`` (JSON). ``path`` may be a ``Destination`` already checked (by
    ``destination(path, "--save-directions", inputs)``, before any work); the file is written
    atomically (``report.output.write_file``)."""
    if not plane.names:
        raise ValueError("a plane without parameter names cannot be saved")
    dest = path if isinstance(path, Destination) else \
        destination(Path(path), "--save-directions", inputs)
    # copies: safetensors refuses tensors that share storage (views of one buffer)
    tensors = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in
               (("origin", plane.origin), ("u", plane.u), ("v", plane.v))}
    metadata = {
        "format": _FORMAT,
        "version": _VERSION,
        "basis": plane.basis,
        "seed": json.dumps(plane.seed),
        "normalize": json.dumps(plane.normalize),
        "ignore": json.dumps(plane.ignore),
        "names": json.dumps(list(plane.names)),
        "shapes": json.dumps([list(s) for s in plane.shapes]),
    }
    data = safetensors_bytes(tensors, metadata)
    write_file(dest, lambda target: target.write_bytes(data))


def _describe_parameter(name: str, shape: Sequence[int]) -> str:
    return f"{name} {list(shape)}"


def load_plane(path: Path | str, names: Sequence[str], shapes: Shapes, *,
               option: str = "--load-directions", device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Plane:
    """Read a plane written by ``save_plane`` and check it against the problem's parameters
    ``names`` and ``shapes``. An unreadable or foreign file, or one for other parameters, is
    refused with a LandscapeError naming ``option``, the file and the first mismatching
    parameter (one line). The tensors come back as stored, or in ``dtype`` on ``device``."""
    path = Path(path)

    def error(message: str) -> LandscapeError:
        return LandscapeError(f"{option} {path}: {message}")

    if path.is_dir():
        raise error("is a folder; give a directions file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            if metadata.get("format") != _FORMAT:
                raise error("is not a directions file written by --save-directions "
                            "(no landscape metadata)")
            missing = [k for k in ("origin", "u", "v") if k not in keys]
            if missing:
                raise error(f"has no tensor {missing[0]}; it is not a complete directions file")
            tensors = {k: handle.get_tensor(k) for k in ("origin", "u", "v")}
    except FileNotFoundError:
        raise error("does not exist") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}") from None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise error(f"is not a safetensors file ({exc})") from None
    if metadata.get("version") != _VERSION:
        raise error(f"has version {metadata.get('version')!r}; this tool reads version {_VERSION}")
    try:
        file_names = json.loads(metadata["names"])
        file_shapes = json.loads(metadata["shapes"])
        seed, normalize, ignore = (json.loads(metadata[k]) for k in ("seed", "normalize", "ignore"))
        basis = metadata["basis"]
        if not (isinstance(file_names, list) and all(isinstance(n, str) for n in file_names)
                and isinstance(file_shapes, list) and len(file_shapes) == len(file_names)
                and all(isinstance(s, list) and all(isinstance(k, int) and k >= 0 for k in s)
                        for s in file_shapes)
                and basis in BASES and (seed is None or isinstance(seed, int))
                and (normalize is None or normalize in NORMALIZATIONS)
                and (ignore is None or ignore in IGNORES)):
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise error("has damaged metadata (basis, seed, normalize, ignore, names, shapes)") from None
    _check_parameters(error, file_names, file_shapes, names, shapes)
    n = sum(_sizes(names, shapes))
    for key, t in tensors.items():
        if t.dim() != 1 or t.numel() != n or not t.is_floating_point():
            raise error(f"tensor {key} is {t.dtype} of shape {list(t.shape)}, not a flat "
                        f"floating-point vector of the {n} parameters")
    moved = {k: t.to(device=t.device if device is None else device,
                     dtype=t.dtype if dtype is None else dtype) for k, t in tensors.items()}
    return Plane(origin=moved["origin"], u=moved["u"], v=moved["v"], basis=basis, seed=seed,
                 normalize=normalize, ignore=ignore, names=tuple(names),
                 shapes=tuple(tuple(s) for s in shapes))


def _check_parameters(error, file_names: list[str], file_shapes: list[list[int]],
                      names: Sequence[str], shapes: Shapes) -> None:
    """Refuse directions for other parameters, naming the first one that differs."""
    model = [(str(n), [int(k) for k in s]) for n, s in zip(names, shapes)]
    stored = list(zip(file_names, file_shapes))
    for index, (mine, theirs) in enumerate(zip(model, stored)):
        if mine != theirs:
            raise error(f"the directions are for other parameters: parameter {index} is "
                        f"{_describe_parameter(*theirs)} in the file but "
                        f"{_describe_parameter(*mine)} in the model")
    if len(stored) < len(model):
        raise error(f"the directions are for other parameters: the model's parameter "
                    f"{len(stored)} ({_describe_parameter(*model[len(stored)])}) is not in the "
                    f"file ({len(stored)} parameters, the model has {len(model)})")
    if len(stored) > len(model):
        raise error(f"the directions are for other parameters: the file's parameter "
                    f"{len(model)} ({_describe_parameter(*stored[len(model)])}) is not in the "
                    f"model ({len(model)} parameters, the file has {len(stored)})")


# ----------------------------------------------------------------------------- grids


def parse_grid(text: str, option: str) -> list[float]:
    """``start:stop:num``: ``num`` ≥ 2 evenly spaced points from ``start`` to ``stop``
    inclusive, ``start`` < ``stop``, both finite. Anything else is refused with a LandscapeError
    naming ``option`` and the text, one line (``--grid 1:0:5: start must be less than stop``)."""

    def error(message: str) -> LandscapeError:
        return LandscapeError(f"{option} {text}: {message}")

    parts = text.strip().split(":")
    if len(parts) != 3:
        raise error("expected start:stop:num (for example -1:1:21)")
    bounds = []
    for label, part in zip(("start", "stop"), parts[:2]):
        try:
            value = float(part)
        except ValueError:
            raise error(f"{label} {part.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise error(f"{label} must be a finite number")
        bounds.append(value)
    try:
        num = int(parts[2])
    except ValueError:
        raise error(f"num {parts[2].strip()!r} is not a whole number of points") from None
    start, stop = bounds
    if num < 2:
        raise error("at least 2 points")
    if num > MAX_GRID_POINTS:
        raise error(f"at most {MAX_GRID_POINTS} points")
    if not start < stop:
        raise error("start must be less than stop")
    step = (stop - start) / (num - 1)
    if not math.isfinite(step):
        raise error("the range is too wide")
    return [start + (stop - start) * i / (num - 1) for i in range(num - 1)] + [stop]
