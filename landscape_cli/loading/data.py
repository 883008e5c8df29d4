"""Data sources (DESIGN §2): a ``.npz``/``.pt`` file of arrays ``x``, ``y``, or a factory that
returns a Dataset, a DataLoader, an iterable of batches, or a pair of tensors ``(x, y)``.

The batches are read once, in order, into a fixed list: the analysed loss is then one
deterministic function of the weights, whatever shuffling the user's loader does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from landscape_cli.config import Config
from landscape_cli.errors import DataError
from landscape_cli.loading.factory import USER_CODE_ERRORS, call, describe_exception


@dataclass
class Batches:
    """A fixed list of batches, the number of samples in each, and the config file that
    named them (what the checks of the loss on them name)."""

    batches: list[Any]
    sizes: list[int]
    source: str = "<config>"

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


def batch_size(batch: Any, where: str = "data") -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise DataError(f"{where}: a batch holds no tensor with a batch dimension")
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
    """Arrays ``x`` and ``y`` of a .npz, or of a .pt that holds a dict (only these two are
    read: another array, of objects say, does not matter)."""
    where = f"{source}: data.path: {path}"
    if not path.is_file():
        raise DataError(f"{where}: {'not a regular file' if path.exists() else 'file not found'}")
    if path.suffix not in (".npz", ".pt", ".pth"):
        raise DataError(f"{where}: expected a .npz or .pt file")
    try:
        found = (np.load(path, allow_pickle=False) if path.suffix == ".npz"
                 else torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise DataError(f"{where}: cannot be read: {describe_exception(exc)}") from None
    with found if isinstance(found, np.lib.npyio.NpzFile) else nullcontext():
        if not isinstance(found, Mapping):
            raise DataError(f"{where}: holds a {type(found).__name__}, not a dict of arrays "
                            "'x' and 'y'")
        x, y = (_array(found, name, where) for name in ("x", "y"))
    return _checked_pair(x, y, where)


def _array(found: Mapping, name: str, where: str) -> torch.Tensor:
    """``found[name]`` as a tensor (an .npz reads it only now)."""
    if name not in found:
        held = ", ".join(repr(k) for k in list(found)[:8]) or "nothing"
        raise DataError(f"{where}: has no array '{name}' (it holds {held})")
    try:
        value = found[name]
        return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except Exception as exc:
        raise DataError(f"{where}: array '{name}' cannot be read: {describe_exception(exc)}") from None


def _checked_pair(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` if each has a row per sample, as many rows as the other."""
    for name, tensor in (("x", x), ("y", y)):
        if tensor.dim() == 0:
            raise DataError(f"{where}: {name} is a scalar; it needs one row per sample")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    return x, y


def _slices(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return ((x[i:i + size], y[i:i + size]) for i in range(0, len(x), size))


def _iterate(obj: Any, size: int, source: str) -> Iterable[Any]:
    """Batches from whatever a data factory returned."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return _slices(*_checked_pair(obj[0], obj[1], f"{source}: data.factory"), size)
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
            n = batch_size(batch, f"{source}: data")
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
    except USER_CODE_ERRORS as exc:
        raise DataError(f"{source}: reading the data failed: {describe_exception(exc)}") from exc
    if not batches:
        raise DataError(f"{source}: data: the dataset is empty")
    return Batches(batches=batches, sizes=sizes, source=source)


def to_device(batch: Any, device: torch.device, dtype: torch.dtype, pin: bool = False) -> Any:
    """Move a batch to ``device``; floating tensors take the analysis dtype. ``pin`` puts
    host tensors in page-locked memory, from which copies to a GPU run asynchronously."""

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype,
                 non_blocking=t.is_pinned())
        return t.pin_memory() if pin and not t.is_pinned() else t

    return map_tensors(batch, move)
