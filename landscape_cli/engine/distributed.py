"""Data parallelism under ``torchrun`` (DESIGN §4): each process (rank) holds a contiguous,
deterministic share of the batches, and the sums of every pass over the data are added up
across ranks in one place (``passes.reduce``), so that every number equals the single-process
one up to summation order. Backend ``gloo`` on the CPU, ``nccl`` on CUDA (one device per local
rank), chosen from the device; nothing here runs outside torchrun (WORLD_SIZE unset or 1)."""

from __future__ import annotations

import atexit
import gc
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from landscape_cli.errors import EXIT_INTERNAL, LandscapeError, first_line


class DistributedError(LandscapeError):
    """The ranks of a torchrun launch lost each other (one stopped, or a wait timed out)."""

    exit_code = EXIT_INTERNAL

#: how long a collective waits for the other ranks by default (``--dist-timeout``)
DEFAULT_TIMEOUT_S = 600.0


def launched() -> bool:
    """Whether this process is one rank of several, started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def initialize(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group of a torchrun launch (once), and the device this rank uses: on
    CUDA, the local rank's GPU."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # This module binds the group that exists when it is first imported as its functions'
        # default (``group=group.WORLD``). DTensor imports it on first use, after the group
        # exists, and the group then outlives ``destroy_process_group`` (see ``_leave``).
        import torch.distributed.nn.functional as _bound_to_the_world  # noqa: F401

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
        atexit.register(_leave)
    return device


def _leave() -> None:
    """Destroy the process group while the interpreter is whole, so that its threads are
    joined here. A group still referenced is destroyed during the interpreter's finalization
    instead, and gloo's threads then abort the process ("terminate called without an active
    exception") now and then after a sharded run."""
    if dist.is_initialized():
        if "torch.distributed.tensor" in sys.modules:
            # DTensor's sharding caches keep the meshes FSDP made, and a mesh keeps its groups
            from torch.distributed.tensor.debug import _clear_sharding_prop_cache

            _clear_sharding_prop_cache()
        dist.destroy_process_group()
        gc.collect()  # a mesh in a reference cycle would keep its group until finalization


def share(count: int) -> list[int]:
    """This rank's batches: a contiguous block of ``count``, the blocks as even as they can be
    (the first ``count % world`` ranks one more); possibly none."""
    size, index = world_size(), rank()
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return list(range(start, start + base + (index < extra)))


def all_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor added up over the ranks (in place; the identity in one process). A rank
    that stopped or a wait past the timeout ends this one with a ``DistributedError``."""
    if active():
        try:
            for tensor in tensors:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except RuntimeError as exc:
            raise lost(exc) from None
    return tensors


def all_min(value: int) -> int:
    """The least ``value`` over the ranks (itself in one process): for choices that change
    which sums the ranks go through, which must be the same on all of them."""
    return _all_reduce_int(value, dist.ReduceOp.MIN)


def all_max(value: int) -> int:
    """The largest ``value`` over the ranks (itself in one process)."""
    return _all_reduce_int(value, dist.ReduceOp.MAX)


def _all_reduce_int(value: int, op: dist.ReduceOp) -> int:
    if not active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    reduced = torch.tensor([value], dtype=torch.long, device=device)
    try:
        dist.all_reduce(reduced, op=op)
    except RuntimeError as exc:
        raise lost(exc) from None
    return int(reduced.item())


def barrier() -> None:
    """Wait until every rank is here (nothing in one process): a run's end, so that no rank
    tears its connections down while another still reads the last collective from them."""
    if active():
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise lost(exc) from None


def all_agree(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    return bool(all_min(int(flag)))


#: what the backends' errors say when another rank is gone or a wait ran out
COLLECTIVE_FAILURES = ("Connection reset", "Connection closed", "Broken pipe", "timed out",
                       "Timed out", "gloo", "NCCL", "ProcessGroup")


def collective_failed(exc: Exception) -> bool:
    """Whether ``exc``, raised in a pass under torchrun, is a collective that failed (another
    rank stopped, or a wait ran out) rather than the model's own error."""
    return active() and any(marker in str(exc) for marker in COLLECTIVE_FAILURES)


def lost(exc: Exception) -> DistributedError:
    """The one line for a collective that failed."""
    return DistributedError(f"rank {rank()} of {world_size()}: summing with the other ranks "
                            f"failed ({first_line(exc, 200)}); another rank stopped, or did not "
                            "answer within --dist-timeout")
