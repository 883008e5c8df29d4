"""``inspect``: what a checkpoint holds, read without running any model code."""

from __future__ import annotations

from pathlib import Path

import torch

from landscape_cli.errors import CheckpointError
from landscape_cli.loading.checkpoint import UnsafeCheckpoint, read_checkpoint
from landscape_cli.loading.matching import common_prefix
from landscape_cli.loading.optimizer_state import read_optimizer_state
from landscape_cli.results.inspect import InspectResult

#: State-dict entries that are buffers, not parameters, whatever the model (normalisation
#: statistics): the analyses never differentiate them.
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def inspect_checkpoint(path: str | Path, key: str = "auto") -> InspectResult:
    """Describe a checkpoint. It is read as the analyses read it (``weights_only=True``, which
    runs nothing); one that this refuses, a file or a folder's shard, is described by the
    globals it names instead of failing."""
    try:
        ckpt = read_checkpoint(path, key)
    except UnsafeCheckpoint as refused:
        return InspectResult(format=refused.format, key=None, tensors=[], n_params=0,
                             n_buffers=0, n_tensors=0, detected_prefix=None, unsafe_globals=refused.names)
    roles = tensor_roles(ckpt.tensors)
    tensors = [{"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                "numel": t.numel(), "role": roles[name]} for name, t in ckpt.tensors.items()]
    prefix = common_prefix(list(ckpt.tensors), attribute=ckpt.format == "lightning")
    count = {role: sum(t["numel"] for t in tensors if t["role"] == role)
             for role in ("parameter", "buffer")}
    return InspectResult(format=ckpt.format, key=ckpt.key, tensors=tensors,
                         n_params=count["parameter"], n_buffers=count["buffer"],
                         n_tensors=len(tensors), detected_prefix=prefix or None,
                         unsafe_globals=[], metadata=dict(ckpt.metadata),
                         optimizer=_optimizer_state(path))


def _optimizer_state(path: str | Path) -> dict | None:
    """What optimizer state the checkpoint holds, as the stability measures would read it."""
    try:
        raw = read_optimizer_state(path)
    except CheckpointError as exc:
        return {"error": str(exc)}
    return None if raw is None else raw.describe()


def tensor_roles(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each entry's role as the analyses count it: ``parameter`` (floating, differentiated),
    ``buffer`` (normalisation statistics, integer counters), or ``tied to NAME`` for a tensor
    that shares its storage with an earlier one (``torch.save`` keeps tied weights, e.g. an
    LM head and its embedding, as one storage under two names)."""
    roles: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in tensors.items():
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tensor.stride()) if tensor.layout == torch.strided and not tensor.is_meta else None
        if view is not None and view in seen and tensor.numel():
            roles[name] = f"tied to {seen[view]}"
            continue
        if view is not None:
            seen[view] = name
        buffer = name.rpartition(".")[2] in BUFFER_NAMES or not tensor.is_floating_point()
        roles[name] = "buffer" if buffer else "parameter"
    return roles
