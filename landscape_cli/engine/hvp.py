"""The HVP engine: loss, gradient and H·V for a block V (k×n) of the dataset loss (DESIGN §4).

H·v is the directional derivative of the gradient, ∇²L(θ)v = d/dε ∇L(θ+εv) (Pearlmutter 1994).
Both strategies below pass over the data in *groups*: consecutive batches joined into groups of
up to ``GROUP_BYTES`` of saved tensors and a quarter of the memory budget (measured on the first
batch's graph), if the first group's loss and gradient are its batches' ones to rounding,
checked before any graph is kept (a loss that depends on how samples are batched keeps its
batches). One pass per group instead of per batch halves an HVP or better on the three CPU
samples, whose batches leave it bound by per-operator overhead (a ResNet-8's 158 MB batches
stay apart). A group is joined on the device pass by pass, so the host holds the data once.
Two strategies, picked by measurement (``benchmarks/README.md``), and one option on the second:

* ``cached``: the first-order graph of the *whole dataset*, ∇L(θ₀) built once with
  ``create_graph=True``, is kept; each block H·V is then a batched backward pass through it
  (``is_grads_batched``: vmap over the k rows), or one pass per row. No forward pass or first
  backward is repeated, which makes an HVP cost under one gradient on the samples. A batched
  pass takes at most ``BATCHED_BYTES`` ÷ (a group's saved tensors) rows; blocks go one row at
  a time where that is one row (a ResNet-8's 158 MB batches) and, on the CPU, where a group
  saves more than ``CPU_BATCHED_GROUP_BYTES`` (``batches_rows``). Chosen by ``auto`` when the
  tensors that graph saves (counted with saved-tensor hooks while building it) fit the memory
  budget.
* ``stream``: group by group, with one group on the device at a time, so memory stops growing
  once the data fills a group. A product goes through forward-over-reverse
  (``torch.func.jvp`` of ``torch.func.grad``, vmapped over the k vectors, at most
  ``BATCHED_BYTES`` ÷ (a joined group's saved tensors) rows at once) or double backward (one
  first-order graph per group, then a backward pass per row), by device: on a GPU always
  forward-over-reverse (an H100 ResNet-18, 10,000 images: 3× a gradient for one vector against
  6×, 2× per vector in blocks of 8); on the CPU double backward for one vector (faster on every
  sample) and for blocks unless their groups are small (``batches_rows``; a ResNet-8: vmapped
  8.5× a gradient per vector, double backward 2.8×).
* ``compile`` (an option of ``stream``): forward-over-reverse through ``torch.compile``, in
  chunks of ``COMPILED_ROWS`` rows, so a run compiles once per batch shape for single vectors
  and once for blocks (a minute or two each on 2 CPU cores). ``auto`` then streams, since a
  kept graph has nothing left to compile. It pays on long runs: 2.8× a gradient for k = 1 on
  the H100 ResNet-18 (3.0× eager), 0.65× per vector for k = 8 on the CPU sample transformer
  (cached 1.2–2.1×), nothing on CPU convolutions.

Every choice between ways is a rule on the device type and the measured saved-tensor bytes
(fixed for a model, data, dtype and device), never a timing: the ways round differently, and
the same seed must give the same numbers however loaded the machine is. For the same reason the
default memory budget is a share of the memory the machine *has*, not of what is free now.

Measured (``benchmarks/README.md``), one HVP costs, in gradients: cached 0.29–0.88× for k = 1
and 0.19–0.86× per vector for k = 8 on the samples (2 CPU cores, batches joined); stream
0.55–1.20× for k = 1 and 0.30–0.88× per vector for k = 8 there; 2.0× per vector for k = 8
streamed on the GPU ResNet-18, 2.4–2.9× cached on a CPU ResNet-8 (convolutions' double backward).

Engines keep freed host memory in the process (``host_memory.py``): glibc would otherwise give
the activation buffers back to the OS after every HVP and fault them in again at the next.

Every path falls back automatically: a model that ``vmap`` or ``torch.compile`` cannot handle
is run eagerly one vector at a time, and a kept graph that runs out of GPU memory streams, with
a warning in the report. Nothing here reads a value back from the device (no host-device
synchronisation per HVP); the algorithms check that the numbers they read are finite and raise
``FloatingPointError`` otherwise (see ``NONFINITE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from landscape_cli.data_batches import concatenates
from landscape_cli.engine import distributed
from landscape_cli.engine.host_memory import keep_freed_memory
from landscape_cli.engine.passes import Cost, Evaluation, Passes, SavedBytes, reduce
from landscape_cli.engine.problem import Problem

STRATEGIES = ("auto", "cached", "stream")
#: rows per compiled block: every block goes through ``torch.compile`` in chunks of this many
#: rows (a single vector alone), so a run compiles once per batch shape, not once per block size
COMPILED_ROWS = 8
#: the kept graph joins consecutive batches into groups of up to this many bytes of saved
#: tensors: small batches leave an HVP bound by per-operator overhead, which joining divides
#: (measured: ``benchmarks/README.md``)
GROUP_BYTES = 64 << 20
#: a batched backward pass through the kept graph holds about rows × a group's saved tensors
#: at once; past this many bytes it runs out of cache and loses to one row at a time (CPU:
#: 0.5× per vector at 32 rows × 1 MB, 2× at 32 × 26 MB, 1.6× at 8 × 158 MB)
BATCHED_BYTES = 256 << 20
#: on the CPU, a block's rows go together only where a group saves at most this many bytes:
#: batching pays where a group's operators are too small to keep the cores busy, and otherwise
#: only adds vmap's overhead. Kept graph, 2 threads, per vector: batched 1.1–1.6× faster on
#: groups of 1.1–5.8 MiB (the MLP, the CNN on 256 digits, the transformer on 32 sequences),
#: even at 4.4–7.3 MiB, even to 1.9× slower at 11.6–30 MiB (``benchmarks/README.md``; at 1
#: thread it never paid, so more cores may want a larger bound: not measured)
CPU_BATCHED_GROUP_BYTES = 6 << 20
NONFINITE = ("a Hessian-vector product is not finite (NaN or Inf) at the checkpoint's weights; "
             "the loss is not twice differentiable there or overflows in this dtype "
             "(try dtype: float64)")


def batches_rows(device: torch.device, group_bytes: int) -> bool:
    """Rule: whether a block's rows go through the groups together (one batched backward pass,
    or vmapped forward-over-reverse) rather than one at a time: where ``BATCHED_BYTES`` hold two
    rows of the largest group's saved tensors, and on the CPU only where that group saves at
    most ``CPU_BATCHED_GROUP_BYTES``. The bytes are measured, so the choice is fixed for a
    model, data, dtype and device; it is never timed, since the two ways round differently and
    the same seed must give the same numbers however busy the machine is."""
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


class _OverBudget(Exception):
    """The kept graph outgrew the memory budget: stream instead."""


@dataclass
class _FirstOrderGraph:
    """Σ_g w_g ∇L_g(θ₀) with its graph and Σ_g w_g L_g(θ₀) over this process's groups, the
    bytes the graph saved, and the most any one group saved."""

    theta: torch.Tensor
    graph: torch.Tensor
    loss: torch.Tensor
    bytes: int
    largest_group: int


@dataclass
class HVPEngine:
    """Exact loss, gradient and Hessian-vector products of a ``Problem`` at its θ₀."""

    problem: Problem
    strategy: str = "auto"
    memory_budget: int | None = None
    compile: bool = False
    #: L(θ₀) and the accuracy there when already known (a pass that checked the weights)
    evaluation: Evaluation | None = None
    #: the passes to go through (their cost and warnings become the engine's); new by default
    passes: Passes | None = None
    cost: Cost = field(default_factory=Cost)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        keep_freed_memory()
        if self.passes is None:
            self.passes = Passes(self.problem, cost=self.cost, warnings=self.warnings)
        self.cost, self.warnings = self.passes.cost, self.passes.warnings
        self._theta: torch.Tensor | None = None
        self._grad_graph: torch.Tensor | None = None
        self._loss: float | None = None
        self._grad: torch.Tensor | None = None
        self._vectorize = True
        self._batched_rows = 1  # cached: rows per batched backward pass (BATCHED_BYTES)
        self._largest_group = 0  # cached: the most saved tensors of one group, measured
        self._group_bytes = 0  # the largest group's saved tensors, estimated; 0: not measured
        # rows per vmapped forward-over-reverse: BATCHED_BYTES' worth of joined groups
        # (_batch_groups), lowered on out-of-memory
        self._chunk = 1 << 30
        self._compiled = None
        if self.compile:
            # Dynamo keeps its graphs, and its limit of 8 recompilations, per code object: shared
            # by every engine of the process, so once 8 graphs were spent (two or three models)
            # the next engine's "compiled" HVPs would silently run eagerly.
            torch.compiler.reset()
            self._compiled = torch.compile(self._forward_over_reverse, dynamic=False)
        self._groups: list[tuple[float, list[int]]] | None = None  # _batch_groups, worked out once
        self.mode = "stream"
        self.cached_bytes = 0
        if self.memory_budget is None:
            self.memory_budget = default_memory_budget(self.problem.device)
        if self.strategy == "cached":
            self._build_cache(None)
        elif self.strategy == "auto" and not self.compile and self.memory_budget > 0:
            self._cache_or_stream()

    # ------------------------------------------------------------------ first order

    def _cache_or_stream(self) -> None:
        """``auto``: keep the graph where it fits the budget, and stream, with a warning, where
        the GPU runs out of memory first (the default budget is a share of the GPU's memory,
        not of what other processes left free)."""
        try:
            self._build_cache(self.memory_budget)
        except torch.OutOfMemoryError as exc:
            self._warn("the kept first-order graph ran out of GPU memory", exc,
                       "streamed instead (a set --memory-budget or --hvp-strategy keeps the "
                       "numbers from depending on the memory other processes hold)")
        if self.mode == "stream" and self.problem.device.type == "cuda":
            torch.cuda.empty_cache()  # a partial graph's blocks, for the streamed groups

    def _build_cache(self, budget: int | None) -> None:
        """Keep ∇L(θ₀) with its graph over all batches, joined into groups where they are small
        (``_batch_groups``), unless it outgrows ``budget``. Under torchrun every rank keeps its
        own batches' graph, and only where every rank's fits (they agree, so that they all go
        through the same sums); a rank without batches keeps zeros."""
        failure = None
        try:
            graph = self._first_order_graph(self._batch_groups(), budget)
        except torch.OutOfMemoryError as exc:
            graph, failure = None, exc
        if not distributed.all_agree(graph is not None):
            if failure is not None:
                raise failure
            return
        loss, grad = reduce([graph.loss, graph.graph.detach()])
        self._theta, self._grad_graph = graph.theta, graph.graph
        self._loss, self._grad = float(loss), grad
        self.cost.grads += 1
        self.mode = "cached"
        self.cached_bytes = graph.bytes
        self._largest_group = graph.largest_group
        self._batched_rows = max(1, BATCHED_BYTES // max(graph.largest_group, 1))

    def _first_order_graph(self, groups: list[tuple[float, list[int]]],
                           budget: int | None) -> _FirstOrderGraph | None:
        """Σ_g w_g ∇L_g(θ₀) with its graph over this process's ``groups`` of (weight, batch
        indices) and Σ_g w_g L_g(θ₀), or None as soon as the tensors it saves outgrow
        ``budget``."""
        theta = self.problem.theta0.detach().clone().requires_grad_(True)
        saved = SavedBytes()
        largest_group = 0

        def term(weight: float, batch: object) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal largest_group
            before = saved.bytes
            loss, grad = self._weighted_terms(theta, weight, batch, create_graph=True)
            largest_group = max(largest_group, saved.bytes - before)
            if budget is not None and saved.bytes > budget:
                raise _OverBudget
            return loss.detach(), grad

        try:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                # a process's own graph: its products are reduced (``_hvp_cached``), not it
                loss, grad_graph = self.passes.sum_over(term, groups, reduced=False)
        except _OverBudget:
            return None
        return _FirstOrderGraph(theta, grad_graph, loss, saved.bytes, largest_group)

    def _weighted_terms(self, theta: torch.Tensor, weight: float, batch: object,
                        create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(w·L_b(θ), w·∇L_b(θ)) for one batch (or group) on the device."""
        loss = weight * self.problem.mean_batch_loss(theta, batch)
        return loss, torch.autograd.grad(loss, theta, create_graph=create_graph)[0]

    def _batch_groups(self) -> list[tuple[float, list[int]]]:
        """(weight, batch indices) of the groups every pass over the data goes through: the
        batches joined by ``_join_batches``, worked out once."""
        if self._groups is None:
            self._groups, self._group_bytes = self._join_batches()
            # vmap holds about a group's activations per row. Batches left apart keep whole
            # blocks: an H100 ResNet-18's 500-image batches took 2× a gradient per vector in
            # vmapped blocks of 8, 3× one at a time
            if self._group_bytes and len(self._groups) < len(self.problem.own):
                self._chunk = max(1, BATCHED_BYTES // self._group_bytes)
        return self._groups

    def _join_batches(self) -> tuple[list[tuple[float, list[int]]], int]:
        """Consecutive batches joined into groups of up to ``GROUP_BYTES`` of saved tensors and a
        quarter of the memory budget (one pass per group instead of per batch), estimated from
        the first batch's graph, if the first group's loss and gradient are its batches' ones to
        rounding (so a loss that depends on how samples are batched keeps its batches), with the
        largest group's estimated bytes. The batches as they are where nothing would be joined,
        the batches do not concatenate or the check fails; with 0 bytes (nothing measured) where
        there is one batch, BatchNorm uses batch statistics (``train-stats``: joining changes L),
        the budget is 0 or the batches are streamed (read in order, one at a time)."""
        weights, own = self.problem.weights, self.problem.own
        per_batch = [(weights[i], [i]) for i in own]
        if (self.problem.bn != "eval" or len(per_batch) < 2 or weights[own[0]] <= 0
                or self.memory_budget <= 0 or self.problem.streamed):
            return per_batch, 0
        theta = self.problem.theta0.detach().clone().requires_grad_(True)
        saved, reference, batch_of = SavedBytes(), _Terms(), self.passes.batch_of
        first = own[0]
        self.cost.data_passes += 1  # over the first group only
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            reference.add(*self._weighted_terms(theta, weights[first], batch_of([first]), create_graph=True))
        bytes_per_weight = max(saved.bytes, 1) / weights[first]
        limit = min(GROUP_BYTES, self.memory_budget // 4)  # an HVP's working set: a few groups
        runs: list[list[int]] = []
        run_weight = 0.0
        for i in own:
            if runs and (run_weight + weights[i]) * bytes_per_weight <= limit:
                runs[-1].append(i)
                run_weight += weights[i]
            else:
                runs.append([i])
                run_weight = weights[i]
        apart = per_batch, int(max(weights[i] for i in own) * bytes_per_weight)
        if len(runs) == len(per_batch) or not all(concatenates([self.problem.batches[i] for i in run])
                                                  for run in runs):
            return apart
        for i in runs[0][1:]:
            reference.add(*self._weighted_terms(theta, weights[i], batch_of([i]), create_graph=False))
        groups = [(sum(weights[i] for i in run), run) for run in runs]
        joined = _Terms()
        joined.add(*self._weighted_terms(theta, groups[0][0], batch_of(runs[0]), create_graph=False))
        if not joined.agrees_with(reference, self.problem.dtype):
            return apart
        return groups, int(max(weight for weight, _ in groups) * bytes_per_weight)

    def memory_left(self) -> int:
        """Bytes of the memory budget the cached graph leaves for the algorithms' vectors (the
        least over the ranks under torchrun: the algorithms' choices must be the same on all)."""
        return distributed.all_min(max(self.memory_budget - self.cached_bytes, 0))

    def loss(self) -> float:
        """L(θ₀), the sample-weighted mean loss over the dataset."""
        if self._loss is None:
            self.evaluate()
        return self._loss

    def evaluate(self) -> tuple[float, float | None]:
        """(L(θ₀), accuracy at θ₀ or None when the task is not classification)."""
        if self.evaluation is None:
            self.evaluation = self.passes.evaluate()
            self._loss = self._loss if self._loss is not None else self.evaluation.loss
        return self._loss, self.evaluation.accuracy

    def grad(self) -> torch.Tensor:
        """∇L(θ₀) as a flat vector."""
        if self._grad is None:
            self._loss, self._grad = self.passes.value_and_grad()
        return self._grad

    # ------------------------------------------------------------------ second order

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """H·vᵢ for each row of ``vectors`` (k×n, or a single vector of n)."""
        single = vectors.dim() == 1
        block = vectors.unsqueeze(0) if single else vectors
        block = block.to(device=self.problem.device, dtype=self.problem.dtype)
        if self.mode == "cached":
            out, = reduce([self._hvp_cached(block)])  # the kept graph is this process's data
        else:
            out = self._hvp_stream(block)
        self.cost.hvps += block.shape[0]
        self.cost.hvp_blocks += 1
        return out[0] if single else out

    def _cached_backward(self, vectors: torch.Tensor, batched: bool) -> torch.Tensor:
        """One backward pass through the kept graph: H·v, or H·vᵢ for each row when batched."""
        return torch.autograd.grad(self._grad_graph, self._theta, grad_outputs=vectors,
                                   retain_graph=True, is_grads_batched=batched)[0]

    def _batched_backward(self, block: torch.Tensor) -> torch.Tensor:
        """H·V by batched backward passes of at most ``_batched_rows`` rows each."""
        return torch.cat([self._cached_backward(part, True) for part in block.split(self._batched_rows)])

    def _cached_blocks_batched(self) -> bool:
        """Whether cached blocks go in batched backward passes (``batches_rows`` on the largest
        group's saved tensors; never after a fallback) or one row at a time. Batching is far
        ahead on a GPU (0.07–0.3× a gradient per vector at k = 32 on the samples, against
        0.66–1.9× for one vector), and cost 1.6× per vector on a ResNet-8's 158 MB batches on
        the CPU."""
        return self._vectorize and batches_rows(self.problem.device, max(self._largest_group, 1))

    def _hvp_cached(self, block: torch.Tensor) -> torch.Tensor:
        if not self._grad_graph.requires_grad:  # a rank without batches: its share is zero
            return torch.zeros_like(block)
        if block.shape[0] > 1 and self._cached_blocks_batched():
            try:
                return self._batched_backward(block)
            except RuntimeError as exc:
                self._fall_back(exc)
        return torch.stack([self._cached_backward(v, False) for v in block])

    def _forward_over_reverse(self, theta: torch.Tensor, block: torch.Tensor,
                              batch: object) -> torch.Tensor:
        """∇²L_b(θ)·vᵢ for each row of ``block``: vmap over the rows of jvp(grad L_b)."""
        grad_fn = torch.func.grad(lambda t: self.problem.mean_batch_loss(t, batch))
        return torch.func.vmap(lambda v: torch.func.jvp(grad_fn, (theta,), (v,))[1])(block)

    def _in_chunks(self, theta: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """Forward-over-reverse over chunks of the block's rows; vmap holds one batch's
        activations per row, so a chunk that runs out of memory is halved (and stays so)."""
        while True:
            try:
                return torch.cat([self._forward_over_reverse(theta, part, batch)
                                  for part in block.split(self._chunk)])
            except torch.OutOfMemoryError:
                if min(self._chunk, len(block)) == 1:
                    raise
                self._chunk = (min(self._chunk, len(block)) + 1) // 2
                if self.problem.device.type == "cuda":
                    torch.cuda.empty_cache()
                if not any("out of memory" in w for w in self.warnings):
                    self.warnings.append("a block of HVPs ran out of memory; blocks are split "
                                         "into chunks of at most the size that fits (chunks "
                                         "round differently: the last digits now depend on "
                                         "the memory that was free)")

    def _hvp_stream(self, block: torch.Tensor) -> torch.Tensor:
        out, = self.passes.sum_over(lambda weight, batch: (weight * self._group_hvp(block, batch),),
                                    self._batch_groups())
        return out

    def _group_hvp(self, block: torch.Tensor, batch: object) -> torch.Tensor:
        """∇²L_g(θ₀)·vᵢ for each row of ``block`` on one group: compiled where asked, else the
        way ``_forward_over_reverse_for`` says, falling back to double backward."""
        theta0 = self.problem.theta0
        if self._compiled is not None:
            try:
                return self._compiled_rows(theta0, block, batch)
            except Exception as exc:  # torch.compile raises many kinds; eager is exact too
                self._compiled = None
                self._warn("torch.compile failed for this model", exc, "ran eagerly")
        if self._forward_over_reverse_for(block.shape[0]):
            try:
                return self._in_chunks(theta0, block, batch)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                self._fall_back(exc)
        return self._double_backward(theta0, block, batch)

    def _forward_over_reverse_for(self, rows: int) -> bool:
        """Rule: a streamed product of ``rows`` vectors goes through (vmapped)
        forward-over-reverse on a GPU, and on the CPU for blocks whose groups ``batches_rows``
        lets go together; else through double backward. By device and measured saved bytes, not
        by timing, since the two ways round differently. Measured: an H100 ResNet-18 took 3× a
        gradient for one vector forward-over-reverse, 6× by double backward; on the CPU (2
        threads), double backward took 2.2 / 44 / 38 ms for one vector on the MLP / CNN /
        transformer against 5.7 / 56 / 61 ms, vmapped blocks of 32 took 0.58 ms per vector
        against 1.02 on the MLP, tied on the CNN and the transformer, and 8.5× a gradient
        against 2.8× on a ResNet-8's 158 MB batches. Groups not measured
        (one batch, ``train-stats``, a budget of 0) go by double backward on the CPU, which holds
        one row's products at a time."""
        if not self._vectorize:
            return False
        if self.problem.device.type == "cuda":
            return True
        return rows > 1 and batches_rows(self.problem.device, self._group_bytes)

    def _compiled_rows(self, theta0: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """Compiled forward-over-reverse on chunks of ``COMPILED_ROWS`` rows, the last padded with
        zero rows (H·0 = 0, discarded). Compiling is static in shape and costs about a minute per
        shape on a 2-core CPU; a Hutch++ trace alone asks for blocks of 24, 8 and fewer rows."""
        if len(block) == 1:
            return self._compiled(theta0, block, batch)
        padded = torch.cat([block, block.new_zeros(-len(block) % COMPILED_ROWS, block.shape[1])])
        return torch.cat([self._compiled(theta0, chunk, batch)
                          for chunk in padded.split(COMPILED_ROWS)])[:len(block)]

    def _double_backward(self, theta0: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """∇²L_b(θ)·vᵢ by differentiating the batch gradient once more, one row at a time."""
        theta = theta0.detach().requires_grad_(True)
        g = torch.autograd.grad(self.problem.mean_batch_loss(theta, batch), theta, create_graph=True)[0]
        return torch.stack([torch.autograd.grad(g, theta, grad_outputs=v, retain_graph=True)[0]
                            for v in block])

    def _fall_back(self, exc: Exception) -> None:
        self._vectorize = False
        self._warn("vectorised HVPs failed for this model", exc,
                   "fell back to one vector at a time")

    def _warn(self, what: str, exc: Exception, action: str) -> None:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.warnings.append(f"{what} ({first_line[:160]}); {action}")

    def _ways(self) -> dict[str, str]:
        """How products go, by the rules of ``_cached_blocks_batched`` and
        ``_forward_over_reverse_for`` (streamed: once the groups are measured, uncompiled)."""
        if self.mode == "cached":
            return {"cached_block_hvp": "batched" if self._cached_blocks_batched() else "looped"}
        if self._groups is None or self._compiled is not None:
            return {}
        return {"single_vector_hvp": ("forward-over-reverse" if self._forward_over_reverse_for(1)
                                      else "double backward"),
                "stream_block_hvp": ("vmapped forward-over-reverse" if self._forward_over_reverse_for(2)
                                     else "double backward")}

    def describe(self) -> dict[str, object]:
        """The strategy used, for the report's settings."""
        return {"hvp_strategy": self.mode, "vectorized": self._vectorize,
                "compiled": self.mode == "stream" and self._compiled is not None,
                **({"hvp_chunk": self._chunk} if self.mode == "stream" and self._chunk < 1 << 30 else {}),
                **self._ways(),
                "cached_graph_mb": round(self.cached_bytes / 2**20, 3),
                **({"batch_groups": len(self._groups)} if self._groups is not None else {}),
                **({"cached_batched_rows": self._batched_rows} if self.mode == "cached" else {}),
                "memory_budget_mb": round(self.memory_budget / 2**20, 3)}

