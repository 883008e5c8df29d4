"""Data sources (DESIGN §2): a ``.npz``/``.pt`` file of arrays ``x``, ``y``, or a factory that
returns a Dataset, a DataLoader, an iterable of batches, or a pair of tensors ``(x, y)``.

The batches are read once, in order, into a fixed list: the analysed loss is then one
deterministic function of the weights, whatever shuffling the user's loader does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from landscape_cli.config import Config
from landscape_cli.errors import DataError
from landscape_cli.loading.factory import call


@dataclass
class Batches:
    """A fixed list of batches and the number of samples in each."""

    batches: list[Any]
    sizes: list[int]

    @property
    def n_samples(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.batches)


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) batch, in order."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def batch_size(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise DataError("data: a batch holds no tensor with a batch dimension")
    return int(tensor.shape[0])


def map_tensors(obj: Any, fn) -> Any:
    """Apply ``fn`` to every tensor in a nested batch (tuples, lists, dicts)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [map_tensors(v, fn) for v in obj])
    return obj


def _same_sequence(like: list | tuple, items: list) -> list | tuple:
    """``items`` in a sequence of ``like``'s type (a namedtuple takes them as fields)."""
    return type(like)(*items) if hasattr(like, "_fields") else type(like)(items)


def concat_batches(batches: list[Any]) -> Any | None:
    """One batch holding ``batches``' samples in order (tensors joined along dimension 0, in
    the same tuples, lists and dicts), or None when their structures or trailing shapes
    differ, or a leaf is not a tensor with a batch dimension."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(b, torch.Tensor) and b.dim() > 0 and b.dtype == first.dtype
                   and b.shape[1:] == first.shape[1:] for b in batches):
            return None
        return torch.cat(batches)
    if isinstance(first, Mapping):
        if not all(isinstance(b, Mapping) and b.keys() == first.keys() for b in batches):
            return None
        parts = {k: concat_batches([b[k] for b in batches]) for k in first}
        return None if any(v is None for v in parts.values()) else parts
    if isinstance(first, (list, tuple)):
        if not all(type(b) is type(first) and len(b) == len(first) for b in batches):
            return None
        parts = [concat_batches([b[i] for b in batches]) for i in range(len(first))]
        if any(v is None for v in parts):
            return None
        return _same_sequence(first, parts)
    return None


def concatenates(batches: list[Any]) -> bool:
    """Whether ``concat_batches`` joins ``batches``, checked on empty views of them (no copy)."""
    return concat_batches([_head(b, 0) for b in batches]) is not None


def _head(batch: Any, n: int) -> Any:
    return map_tensors(batch, lambda t: t[:n] if t.dim() > 0 else t)


def _read_arrays(path: Path, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"{source}: data.path: file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                found = dict(arrays)
        elif path.suffix in (".pt", ".pth"):
            found = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"{source}: data.path: {path.name}: expected a .npz or .pt file")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: data.path: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, Mapping) or "x" not in found or "y" not in found:
        keys = ", ".join(map(str, found)) if isinstance(found, Mapping) else type(found).__name__
        raise DataError(f"{source}: data.path: {path.name} must hold arrays 'x' and 'y' (found {keys})")
    x, y = (torch.as_tensor(np.asarray(found[k])) if not isinstance(found[k], torch.Tensor)
            else found[k] for k in ("x", "y"))
    if x.shape[:1] != y.shape[:1]:
        raise DataError(f"{source}: data.path: x has {x.shape[0]} samples but y has {y.shape[0]}")
    return x, y


def _slices(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return ((x[i:i + size], y[i:i + size]) for i in range(0, len(x), size))


def _iterate(obj: Any, size: int, source: str) -> Iterable[Any]:
    """Batches from whatever a data factory returned."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        if obj[0].shape[:1] != obj[1].shape[:1]:
            raise DataError(f"{source}: data.factory: x and y differ in length")
        return _slices(obj[0], obj[1], size)
    if isinstance(obj, DataLoader):
        return obj
    if isinstance(obj, Dataset) and hasattr(obj, "__len__"):
        return DataLoader(obj, batch_size=size, shuffle=False)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Mapping)):
        return obj
    raise DataError(f"{source}: data.factory returned a {type(obj).__name__}; expected a Dataset, "
                    "a DataLoader, an iterable of batches or a pair of tensors (x, y)")


def load_batches(config: Config, max_batches: int | None = None) -> Batches:
    """Read the configured data once into a fixed list of batches, on the CPU."""
    spec, source = config.data, config.source
    if spec.path is not None:
        stream = _slices(*_read_arrays(Path(spec.path), source), spec.batch_size)
    else:
        stream = _iterate(call(spec.factory, spec.kwargs, source, "data.factory"),
                          spec.batch_size, source)
    batches, sizes = [], []
    budget = spec.max_samples
    try:
        for batch in stream:
            if max_batches is not None and len(batches) >= max_batches:
                break
            n = batch_size(batch)
            if budget is not None and n > budget:
                batch, n = _head(batch, budget), budget
            if n == 0:
                continue
            batches.append(batch)
            sizes.append(n)
            if budget is not None:
                budget -= n
                if budget == 0:
                    break
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: reading the data failed: {type(exc).__name__}: {exc}") from exc
    if not batches:
        raise DataError(f"{source}: data: the dataset is empty")
    return Batches(batches=batches, sizes=sizes)


def to_device(batch: Any, device: torch.device, dtype: torch.dtype, pin: bool = False) -> Any:
    """Move a batch to ``device``; floating tensors take the analysis dtype. ``pin`` puts
    host tensors in page-locked memory, from which copies to a GPU run asynchronously."""

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype,
                 non_blocking=t.is_pinned())
        return t.pin_memory() if pin and not t.is_pinned() else t

    return map_tensors(batch, move)
