"""The file of a plane's directions (``interpolate --save-directions`` / ``--load-directions``):
a safetensors file with the flat tensors ``origin``, ``u`` and ``v`` and metadata saying what
made them and which parameters (names and shapes, in order) the flat vectors stand for, so that
a plane can be redrawn or compared across checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from landscape_cli.analyses.directions import BASES, Plane, Shapes, sizes
from landscape_cli.errors import LandscapeError
from landscape_cli.report.output import Destination, destination, write_file
from landscape_cli.results.interpolate import IGNORES, NORMALIZATIONS

#: ``format`` in the metadata of a file ``save_plane`` writes.
FORMAT = "landscape-directions"
VERSION = "1"


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
        "format": FORMAT,
        "version": VERSION,
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
            if metadata.get("format") != FORMAT:
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
    if metadata.get("version") != VERSION:
        raise error(f"has version {metadata.get('version')!r}; this tool reads version {VERSION}")
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
    n = sum(sizes(names, shapes))
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
