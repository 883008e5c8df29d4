"""Data sources (DESIGN §2): a ``.npz``/``.pt`` file of arrays ``x``, ``y``, or a factory that
returns a Dataset, a DataLoader, an iterable of batches, or a pair of tensors ``(x, y)``.

The batches are read once, in order, into a fixed list: the analysed loss is then one
deterministic function of the weights, whatever shuffling the user's loader does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from landscape_cli.config import Config
from landscape_cli.data_batches import first_tensor, head, is_classification, map_tensors, tensor_bytes
from landscape_cli.errors import DataError, exception_line
from landscape_cli.loading.factory import USER_CODE_ERRORS, call


@dataclass
class Batches:
    """A fixed list of batches, the number of samples in each, and the config file that
    named them (what the checks of the loss on them name)."""

    batches: Sequence[Any]
    sizes: list[int]
    source: str = "<config>"
    #: read again from the loader on every pass (``BatchStream``), not held
    streamed: bool = False

    @property
    def classification(self) -> bool:
        """Whether every batch is (inputs, integer classes): seen on the stream's first pass,
        or looked at in the batches held."""
        if self.streamed:
            return self.batches.classification
        return all(is_classification(b) for b in self.batches)

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
        raise DataError(f"{where}: cannot be read: {exception_line(exc)}") from None
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
        raise DataError(f"{where}: array '{name}' cannot be read: {exception_line(exc)}") from None


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


def _batches(config: Config, max_batches: int | None, section: str) -> Iterator[tuple[Any, int]]:
    """The configured data's batches with their sizes, read afresh from the file or the
    factory, cropped to ``max_samples`` and ``max_batches``; empty batches skipped."""
    spec, source = getattr(config, section), config.source
    try:
        if spec.path is not None:
            stream = _slices(*_read_arrays(Path(spec.path), source, section), spec.batch_size)
        else:
            stream = _iterate(call(spec.factory, spec.kwargs, source, f"{section}.factory"),
                              spec.batch_size, source, section)
        budget, count = spec.max_samples, 0
        for batch in stream:
            if max_batches is not None and count >= max_batches:
                return
            n = batch_size(batch, f"{source}: {section}")
            if budget is not None and n > budget:
                batch, n = head(batch, budget), budget
            if n == 0:
                continue
            count += 1
            yield batch, n
            if budget is not None:
                budget -= n
                if budget == 0:
                    return
    except DataError:
        raise
    except USER_CODE_ERRORS as exc:
        raise DataError(f"{source}: reading the data failed: {exception_line(exc)}") from exc


class BatchStream(Sequence):
    """The batches, read again from the loader on every pass instead of held (``data.stream``):
    item i of a pass in order comes from one running iterator; asking for an earlier one starts
    a new pass. Every pass must give the same batches (a fingerprint of each is compared with
    the first pass's): a shuffling or augmenting loader would make the loss a different
    function on each pass, and is refused."""

    def __init__(self, config: Config, max_batches: int | None, section: str,
                 fingerprints: list[tuple], classification: bool):
        self._open = lambda: _batches(config, max_batches, section)
        self._fingerprints = fingerprints
        self.classification = classification
        self._source = f"{config.source}: {section}.stream"
        self._iterator: Iterator[tuple[Any, int]] | None = None
        self._next = 0

    def __len__(self) -> int:
        return len(self._fingerprints)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._iterator is None or index < self._next:
            self._iterator, self._next = self._open(), 0
        while True:
            batch, _ = next(self._iterator)
            position, self._next = self._next, self._next + 1
            if fingerprint(batch) != self._fingerprints[position]:
                raise DataError(f"{self._source}: batch {position} differs from the first pass's; "
                                "a streamed loader must give the same batches on every pass "
                                "(no shuffling or random augmentation, a fixed seed)")
            if position == index:
                return batch


def fingerprint(batch: Any) -> tuple:
    """A batch's tensors' shapes and sums, to tell whether a loader repeats it."""
    parts: list = []
    map_tensors(batch, lambda t: parts.append((tuple(t.shape), float(t.double().sum()),
                                               float(t.double().abs().sum()))))
    return tuple(parts)


def load_batches(config: Config, max_batches: int | None = None, section: str = "data",
                 host_budget: int | None = None) -> Batches:
    """The configured data (``section``: ``data`` or ``eval_data``) read once, on the CPU: as a
    fixed list of batches, or, with ``stream: true`` or when holding it would pass
    ``host_budget`` bytes (``stream`` unset), as a ``BatchStream`` read again on every pass."""
    spec, source = getattr(config, section), config.source
    held, sizes, prints, nbytes = [], [], [], 0
    streaming, classes = spec.stream is True, True
    for batch, n in _batches(config, max_batches, section):
        sizes.append(n)
        prints.append(fingerprint(batch))
        classes = classes and is_classification(batch)
        if not streaming:
            held.append(batch)
            nbytes += tensor_bytes(batch)
            if spec.stream is None and host_budget is not None and nbytes > host_budget:
                streaming, held = True, []
    if not sizes:
        raise DataError(f"{source}: {section}: the dataset is empty")
    if streaming:
        return Batches(BatchStream(config, max_batches, section, prints, classes), sizes, source,
                       streamed=True)
    return Batches(batches=held, sizes=sizes, source=source)


def held_batches(batches: Iterable[Any], source: str, max_batches: int | None = None) -> Batches:
    """Batches given as an iterable (a DataLoader: a live model's probe set), read once and
    held, at most ``max_batches``; empty ones skipped."""
    held, sizes = [], []
    for batch in batches:
        if max_batches is not None and len(held) >= max_batches:
            break
        n = batch_size(batch, source)
        if n:
            held.append(batch)
            sizes.append(n)
    if not held:
        raise DataError(f"{source}: the probe set is empty")
    return Batches(batches=held, sizes=sizes, source=source)
