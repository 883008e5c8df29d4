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

from landscape_cli.batches import first_tensor, head
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


def batch_size(batch: Any, where: str = "data") -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    tensor = first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise DataError(f"{where}: a batch holds no tensor with a batch dimension")
    return int(tensor.shape[0])


def _read_arrays(path: Path, source: str, section: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrays ``x`` and ``y`` of a .npz, or of a .pt that holds a dict (only these two are
    read: another array, of objects say, does not matter)."""
    where = f"{source}: {section}.path: {path}"
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


def _iterate(obj: Any, size: int, source: str, section: str) -> Iterable[Any]:
    """Batches from whatever a data factory returned."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return _slices(*_checked_pair(obj[0], obj[1], f"{source}: {section}.factory"), size)
    if isinstance(obj, DataLoader):
        return obj
    if isinstance(obj, Dataset) and hasattr(obj, "__len__"):
        return DataLoader(obj, batch_size=size, shuffle=False)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Mapping)):
        return obj
    raise DataError(f"{source}: {section}.factory returned a {type(obj).__name__}; expected a Dataset, "
                    "a DataLoader, an iterable of batches or a pair of tensors (x, y)")


def load_batches(config: Config, max_batches: int | None = None, section: str = "data") -> Batches:
    """Read the configured data (``section``: ``data`` or ``eval_data``) once into a fixed list
    of batches, on the CPU."""
    spec, source = getattr(config, section), config.source
    if spec.path is not None:
        stream = _slices(*_read_arrays(Path(spec.path), source, section), spec.batch_size)
    else:
        stream = _iterate(call(spec.factory, spec.kwargs, source, f"{section}.factory"),
                          spec.batch_size, source, section)
    batches, sizes = [], []
    budget = spec.max_samples
    try:
        for batch in stream:
            if max_batches is not None and len(batches) >= max_batches:
                break
            n = batch_size(batch, f"{source}: {section}")
            if budget is not None and n > budget:
                batch, n = head(batch, budget), budget
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
        raise DataError(f"{source}: {section}: the dataset is empty")
    return Batches(batches=batches, sizes=sizes, source=source)
