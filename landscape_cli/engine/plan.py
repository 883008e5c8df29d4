"""How the HVP engine goes over the data (DESIGN §4): one frozen ``Plan``, worked out by rules on
the device type and measured saved-tensor bytes, never by timing.

H·v passes over the data in *groups*: consecutive batches joined into groups of up to
``GROUP_BYTES`` of saved tensors and a quarter of the memory budget (measured on the first
batch's graph), if the first group's loss and gradient are its batches' ones to rounding,
checked before any graph is kept (a loss that depends on how samples are batched keeps its
batches). Two modes:

* ``cached``: the first-order graph of the whole dataset is kept and each block H·V is a
  backward pass through it, batched over the rows (``is_grads_batched``) or one row at a time
  (``Plan.cached_blocks_batched``); chosen by ``auto`` when that graph fits half the memory
  budget (``CACHED_SHARE``), the other half left to the algorithms' vectors.
* ``stream``: group by group, one group on the device at a time; a product goes through
  forward-over-reverse (vmapped over the rows, in chunks of ``Plan.chunk`` rows) or double
  backward (``Plan.forward_over_reverse_for``); with ``compile``, forward-over-reverse through
  ``torch.compile`` in chunks of ``COMPILED_ROWS`` rows.
* ``fd``: the stream plan without double backward: a block's products are central differences
  of ordinary gradients at 2 points per row, all taken in one pass over the groups
  (``Passes.gradient_combinations``); nothing is kept between passes. Chosen by the user, or by ``auto``
  where a model's exact products fail (``Plan.reason`` says which).

Every choice is a rule on the device type and the measured bytes (fixed for a model, data,
dtype and device): the ways round differently, and the same seed must give the same numbers
however loaded the machine is. For the same reason the default memory budget is a share of the
memory the machine *has*, not of what is free now. The measurements behind the constants are
in ``benchmarks/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from landscape_cli.data_batches import concatenates
from landscape_cli.engine.passes import Group, Passes, SavedBytes, consecutive_runs
from landscape_cli.engine.problem import Problem
from landscape_cli.names import CACHED, FD, STREAM

#: rows per compiled block: every block goes through ``torch.compile`` in chunks of this many
#: rows (a single vector alone), so a run compiles once per batch shape, not once per block size
COMPILED_ROWS = 8
#: groups hold up to this many bytes of saved tensors: small batches leave an HVP bound by
#: per-operator overhead, which joining divides
GROUP_BYTES = 64 << 20
#: a batched pass holds about rows × a group's saved tensors at once; past this many bytes it
#: runs out of cache and loses to one row at a time
BATCHED_BYTES = 256 << 20
#: on the CPU, a block's rows go together only where a group saves at most this many bytes:
#: batching pays where a group's operators are too small to keep the cores busy, and otherwise
#: only adds vmap's overhead (measured at 2 threads; more cores may want a larger bound)
CPU_BATCHED_GROUP_BYTES = 6 << 20
#: the share of the memory budget ``auto`` lets the kept graph take; the rest is the algorithms'
#: (a Krylov basis of a 124M-parameter model needs gigabytes: ``linalg/memory.py``)
CACHED_SHARE = 0.5
#: rows per vmapped forward-over-reverse before any bound applies
UNCHUNKED = 1 << 30


def batches_rows(device: torch.device, group_bytes: int) -> bool:
    """Rule: whether a block's rows go through the groups together (one batched backward pass,
    or vmapped forward-over-reverse) rather than one at a time: where ``BATCHED_BYTES`` hold two
    rows of the largest group's saved tensors, and on the CPU only where that group saves at
    most ``CPU_BATCHED_GROUP_BYTES``."""
    return (0 < group_bytes <= BATCHED_BYTES // 2
            and (device.type == "cuda" or group_bytes <= CPU_BATCHED_GROUP_BYTES))


def default_memory_budget(device: torch.device) -> int:
    """Bytes the cached graph may hold: half the GPU's memory, or 40% of the RAM (``MemTotal``).

    The machine's total, not what is free now: the budget decides cached against stream, the
    group sizes and whether SLQ keeps its bases, each of which changes the last digits, so a
    budget read from free memory made the numbers depend on what else the machine ran."""
    if device.type == "cuda":
        return int(0.5 * torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as handle:
            info = dict(line.split(":", 1) for line in handle)
        return int(0.4 * int(info["MemTotal"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return 4 << 30


@dataclass(frozen=True)
class Plan:
    """How products go. The engine starts from ``start`` and replaces its plan as it learns:
    the groups once worked out, the kept graph once built, and the fallbacks (no vmap, smaller
    chunks, no compiler) once taken."""

    device: torch.device
    memory_budget: int
    mode: str = STREAM
    #: (weight, batch indices) of the groups every pass goes through; None: not worked out yet
    groups: tuple[Group, ...] | None = None
    #: the largest group's saved tensors, estimated while joining; 0: not measured
    group_bytes: int = 0
    #: bytes the kept graph saved, and the most one of its groups saved (cached)
    cached_bytes: int = 0
    largest_group: int = 0
    #: rows per batched backward pass through the kept graph (``BATCHED_BYTES``)
    batched_rows: int = 1
    #: rows per vmapped forward-over-reverse (``BATCHED_BYTES``' worth of joined groups),
    #: lowered on out-of-memory
    chunk: int = UNCHUNKED
    vectorized: bool = True
    compiled: bool = False
    #: why products go by finite differences (``fd``), for the report
    reason: str = ""

    def with_groups(self, groups: list[Group], group_bytes: int, batches: int) -> Plan:
        """The plan once the groups are worked out. vmap holds about a group's activations per
        row; batches left apart keep whole blocks."""
        chunk = self.chunk
        if group_bytes and len(groups) < batches:
            chunk = max(1, BATCHED_BYTES // group_bytes)
        return replace(self, groups=tuple(groups), group_bytes=group_bytes, chunk=chunk)

    def cached(self, cached_bytes: int, largest_group: int) -> Plan:
        """The plan once the kept graph is built."""
        return replace(self, mode=CACHED, cached_bytes=cached_bytes, largest_group=largest_group,
                       batched_rows=max(1, BATCHED_BYTES // max(largest_group, 1)))

    def finite_differences(self, reason: str) -> Plan:
        """The plan once products go by finite differences of gradients (``fd``), and why:
        nothing kept, nothing compiled, no vmap."""
        return replace(self, mode=FD, reason=reason, cached_bytes=0, largest_group=0,
                       compiled=False, vectorized=False)

    def cached_blocks_batched(self) -> bool:
        """Whether cached blocks go in batched backward passes (``batches_rows`` on the largest
        group's saved tensors; never after a fallback) or one row at a time."""
        return self.vectorized and batches_rows(self.device, max(self.largest_group, 1))

    def forward_over_reverse_for(self, rows: int) -> bool:
        """Rule: a streamed product of ``rows`` vectors goes through (vmapped)
        forward-over-reverse on a GPU, and on the CPU for blocks whose groups ``batches_rows``
        lets go together; else through double backward. Groups not measured (one batch,
        ``train-stats``, a budget of 0) go by double backward on the CPU, which holds one row's
        products at a time."""
        if not self.vectorized:
            return False
        if self.device.type == "cuda":
            return True
        return rows > 1 and batches_rows(self.device, self.group_bytes)

    def ways(self) -> dict[str, str]:
        """How products go (streamed: once the groups are measured, uncompiled)."""
        if self.mode == CACHED:
            return {"cached_block_hvp": "batched" if self.cached_blocks_batched() else "looped"}
        if self.groups is None or self.compiled:
            return {}
        return {"single_vector_hvp": ("forward-over-reverse" if self.forward_over_reverse_for(1)
                                      else "double backward"),
                "stream_block_hvp": ("vmapped forward-over-reverse" if self.forward_over_reverse_for(2)
                                     else "double backward")}

    def describe(self) -> dict[str, object]:
        """The plan, for the report's settings."""
        if self.mode == FD:
            return {"hvp_strategy": FD, "hvp_strategy_reason": self.reason,
                    **({"batch_groups": len(self.groups)} if self.groups is not None else {}),
                    "memory_budget_mb": round(self.memory_budget / 2**20, 3)}
        stream = self.mode == STREAM
        return {"hvp_strategy": self.mode, "vectorized": self.vectorized,
                "compiled": stream and self.compiled,
                **({"hvp_chunk": self.chunk} if stream and self.chunk < UNCHUNKED else {}),
                **self.ways(),
                "cached_graph_mb": round(self.cached_bytes / 2**20, 3),
                **({"batch_groups": len(self.groups)} if self.groups is not None else {}),
                **({"cached_batched_rows": self.batched_rows} if not stream else {}),
                "memory_budget_mb": round(self.memory_budget / 2**20, 3)}


def start(problem: Problem, memory_budget: int | None, compile: bool) -> Plan:
    """The plan before anything is measured: streamed, with the budget (default: a share of the
    machine's memory, ``default_memory_budget``)."""
    budget = default_memory_budget(problem.device) if memory_budget is None else memory_budget
    return Plan(device=problem.device, memory_budget=budget, compiled=compile)


def weighted_terms(problem: Problem, theta: torch.Tensor, weight: float, batch: object,
                   create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(w·L_b(θ), w·∇L_b(θ)) for one batch (or group) on the device."""
    loss = weight * problem.mean_batch_loss(theta, batch)
    return loss, torch.autograd.grad(loss, theta, create_graph=create_graph)[0]


@dataclass
class _Terms:
    """Σ_b w_b L_b(θ₀) and Σ_b w_b ∇L_b(θ₀) over some batches, with Σ_b |w_b L_b| and
    Σ_b ‖w_b ∇L_b‖, the sizes their rounding is measured against."""

    loss: float = 0.0
    grad: torch.Tensor | float = 0.0
    loss_scale: float = 0.0
    grad_scale: float = 0.0

    def add(self, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """Add one batch's (or group's) w·L and w·∇L."""
        loss, grad = loss.detach(), grad.detach()
        self.loss, self.grad = self.loss + float(loss), self.grad + grad
        self.loss_scale += float(loss.abs())
        self.grad_scale += float(grad.norm())

    def agrees_with(self, other: _Terms, dtype: torch.dtype) -> bool:
        """Same loss and gradient as ``other`` up to √ε of its terms' size: the same function
        summed in another order, not a loss that depends on how samples are batched."""
        tol = torch.finfo(dtype).eps ** 0.5
        return (abs(self.loss - other.loss) <= tol * other.loss_scale
                and float((self.grad - other.grad).norm()) <= tol * other.grad_scale)


def join_batches(problem: Problem, passes: Passes, memory_budget: int) -> tuple[list[Group], int]:
    """Consecutive batches joined into groups of up to ``GROUP_BYTES`` of saved tensors and a
    quarter of the memory budget (one pass per group instead of per batch), estimated from the
    first batch's graph, if the first group's loss and gradient are its batches' ones to
    rounding (so a loss that depends on how samples are batched keeps its batches), with the
    largest group's estimated bytes. The batches as they are where nothing would be joined,
    the batches do not concatenate or the check fails; with 0 bytes (nothing measured) where
    there is one batch, BatchNorm uses batch statistics (``train-stats``: joining changes L),
    the budget is 0 or the batches are streamed (read in order, one at a time)."""
    if problem.shards is not None:  # every rank the same passes (``Passes.per_batch``)
        return passes.per_batch(), 0
    weights, own = problem.weights, problem.own
    per_batch = [(weights[i], [i]) for i in own]
    if (problem.bn != "eval" or len(per_batch) < 2 or weights[own[0]] <= 0
            or memory_budget <= 0 or problem.streamed):
        return per_batch, 0
    theta = problem.theta0.detach().clone().requires_grad_(True)
    saved, reference, batch_of = SavedBytes(), _Terms(), passes.batch_of
    first = own[0]
    passes.cost.data_passes += 1  # over the first group only
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        reference.add(*weighted_terms(problem, theta, weights[first], batch_of([first]), True))
    bytes_per_weight = max(saved.bytes, 1) / weights[first]
    limit = min(GROUP_BYTES, memory_budget // 4)  # an HVP's working set: a few groups
    runs = consecutive_runs(own, weights, bytes_per_weight, limit)
    apart = per_batch, int(max(weights[i] for i in own) * bytes_per_weight)
    if len(runs) == len(per_batch) or not all(concatenates([problem.batches[i] for i in run])
                                              for run in runs):
        return apart
    for i in runs[0][1:]:
        reference.add(*weighted_terms(problem, theta, weights[i], batch_of([i]), False))
    groups = [(sum(weights[i] for i in run), run) for run in runs]
    joined = _Terms()
    joined.add(*weighted_terms(problem, theta, groups[0][0], batch_of(runs[0]), False))
    if not joined.agrees_with(reference, problem.dtype):
        return apart
    return groups, int(max(weight for weight, _ in groups) * bytes_per_weight)
