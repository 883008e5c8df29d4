"""Batches as nested tensors (tuples, lists, namedtuples, dicts): mapping, joining and moving
them. Neutral ground: the data sources build batches and the engine moves and joins them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


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
    return concat_batches([head(b, 0) for b in batches]) is not None


def head(batch: Any, n: int) -> Any:
    return map_tensors(batch, lambda t: t[:n] if t.dim() > 0 else t)


def to_device(batch: Any, device: torch.device, dtype: torch.dtype, pin: bool = False) -> Any:
    """Move a batch to ``device``; floating tensors take the analysis dtype. ``pin`` puts
    host tensors in page-locked memory, from which copies to a GPU run asynchronously."""

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype,
                 non_blocking=t.is_pinned())
        return t.pin_memory() if pin and not t.is_pinned() else t

    return map_tensors(batch, move)


def is_classification(batch: Any) -> bool:
    """A batch of (inputs, integer class targets of shape (N,))."""
    return (isinstance(batch, (tuple, list)) and len(batch) == 2
            and isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1
            and not batch[1].is_floating_point())


def tensor_bytes(batch: Any) -> int:
    """Bytes of a batch's tensors."""
    sizes: list[int] = []
    map_tensors(batch, lambda t: sizes.append(t.numel() * t.element_size()))
    return sum(sizes)
