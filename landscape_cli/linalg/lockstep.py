"""Many algorithms on diagonal blocks of one operator, their products shared: one product of the
whole operator per round.

Each algorithm (a Lanczos run, an SLQ density) runs on its own diagonal block A_bb of a
symmetric operator A, as it would on ``linalg.operator.restrict(A, slices)``, in a thread of
its own: when it asks for A_bb·V it posts its rows and waits. Once every running algorithm has
posted (or finished), one call of A multiplies a block holding all their rows, each zero
outside its own coordinates: rows are independent products, so (A·[v]_b)_b read back on the
block's coordinates is exactly A_bb·v. Algorithms stay unchanged (any function of an operator
runs), and a batched engine pays one pass for many blocks' vectors (DESIGN §4: blocks of
vectors). Rounds are barriers, so which rows share a product depends only on the algorithms'
step counts, never on thread timing: the same seed gives the same numbers.

How many algorithms run at once is planned against the operator's ``memory_left()``: each
round's block holds rows × n numbers, in and out, for every running algorithm; at most half of
the memory goes to those, and what is left is shared among the running algorithms as their
own ``memory_left()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape_cli.linalg.memory import no_memory
from landscape_cli.linalg.operator import (
    LinearOperator,
    approximate,
    checked,
    product_error,
    rayleigh_error,
    restrict,
)

#: which of the shared operator's products a request asks for: A's own, A's with each row's
#: error measured (``operator.checked``), or A.exact()'s
_OWN, _CHECKED, _EXACT = "own", "checked", "exact"


class _Stopped(BaseException):
    """Raised in an algorithm's thread when the run stops (another one failed, an interrupt):
    a BaseException, so that no ``except Exception`` in the algorithm swallows it."""


@dataclass
class _Request:
    rows: torch.Tensor
    channel: str
    product: torch.Tensor | None = None


@dataclass
class _Task:
    """One algorithm's thread and what it left: its value or its exception."""

    index: int
    thread: threading.Thread | None = None
    done: bool = False
    value: Any = None
    error: BaseException | None = None
    request: _Request | None = None


@dataclass
class _Shared:
    """The state the algorithms' threads and the coordinator share, under one condition."""

    operator: LinearOperator
    indices: list[torch.Tensor]
    share: int | None
    condition: threading.Condition = field(default_factory=threading.Condition)
    tasks: dict[int, _Task] = field(default_factory=dict)
    stopped: bool = False
    exact_lock: threading.Lock = field(default_factory=threading.Lock)
    exact_operator: Any = None
    exact_known: bool = False

    def exact(self) -> LinearOperator | None:
        """A.exact(), asked once (making it may copy the model)."""
        with self.exact_lock:
            if not self.exact_known:
                self.exact_operator, self.exact_known = self.operator.exact(), True
        return self.exact_operator

    def ask(self, index: int, rows: torch.Tensor, channel: str) -> torch.Tensor:
        """Post ``rows`` (k × block size) for the next round and wait for their products."""
        request = _Request(rows, channel)
        with self.condition:
            if self.stopped:
                raise _Stopped
            self.tasks[index].request = request
            self.condition.notify_all()
            while request.product is None and not self.stopped:
                self.condition.wait()
            if request.product is None:
                raise _Stopped
            return request.product


@dataclass(frozen=True)
class BlockView:
    """A_bb as one algorithm sees it: its products go through the shared rounds."""

    shared: _Shared
    index: int
    channel: str = _OWN

    @property
    def size(self) -> int:
        return len(self.shared.indices[self.index])

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.channel == _EXACT else self.shared.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.shared.operator.device

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        return self.shared.ask(self.index, block, self.channel)

    def checked(self, block: torch.Tensor) -> torch.Tensor:
        return self.shared.ask(self.index, block, _CHECKED if self.channel == _OWN else self.channel)

    @property
    def approximate(self) -> bool:
        return self.channel == _OWN and approximate(self.shared.operator)

    def product_error(self) -> float:
        return 0.0 if self.channel == _EXACT else product_error(self.shared.operator)

    def rayleigh_error(self) -> float:
        return 0.0 if self.channel == _EXACT else rayleigh_error(self.shared.operator)

    def memory_left(self) -> int | None:
        return self.shared.share

    def exact(self) -> BlockView | None:
        if self.channel == _EXACT or self.shared.exact() is None:
            return None
        return BlockView(self.shared, self.index, _EXACT)


def plan_width(operator: LinearOperator, rows: int, count: int,
               least: int = 0) -> tuple[int, int | None]:
    """How many of ``count`` algorithms of ``rows`` rows each run at once, and the memory each
    may take for its own vectors: every running one's rows, in and out of the product, take
    2·rows·n numbers, together at most half of ``memory_left()``, and each needs ``least``
    bytes of its own; at least one runs, and where even one does not fit, ``NoMemory`` before
    any product."""
    memory = operator.memory_left()
    if memory is None:
        return count, None
    per_task = 2 * rows * operator.size * operator.dtype.itemsize
    if 0 < memory < per_task + least:
        raise no_memory(f"{count} diagonal block(s) in lockstep (the largest block's own "
                        f"vectors, and {rows} row(s) of {operator.size:,} in and out of the "
                        "shared products)", per_task + least, memory)
    width = max(1, min(count, memory // 2 // max(per_task, 1),
                       memory // max(per_task + least, 1)))
    return width, max(memory - width * per_task, 0) // width


def in_lockstep(operator: LinearOperator, blocks: Sequence[list[slice]],
                algorithm: Callable[[int, LinearOperator], Any], *, rows: int = 1,
                least: Callable[[int], int] = lambda size: 0,
                callback: Callable[[int, int], None] | None = None) -> list[Any]:
    """``algorithm(b, A_bb)`` for every block b (a list of coordinate slices), their products
    shared round by round (module docstring); ``rows``: the most rows one algorithm asks for
    at a time, and ``least(size)``: the fewest bytes it holds of its own on a block of
    ``size`` (both size how many run at once). ``callback(finished, count)`` after each round.
    The first exception of an algorithm stops the others and is raised here."""
    indices = [restrict(operator, slices).index for slices in blocks]
    width, share = plan_width(operator, rows, len(blocks),
                              max((least(len(index)) for index in indices), default=0))
    shared = _Shared(operator, indices, share)
    waiting = list(range(len(blocks)))[::-1]
    finished = 0

    def start(index: int) -> None:
        task = _Task(index)
        view = BlockView(shared, index)

        def body() -> None:
            try:
                task.value = algorithm(index, view)
            except _Stopped:
                pass
            except BaseException as error:  # raised again by the coordinator
                task.error = error
            with shared.condition:
                task.done = True
                shared.condition.notify_all()

        shared.tasks[index] = task
        task.thread = threading.Thread(target=body, name=f"block-{index}", daemon=True)
        task.thread.start()

    results: list[Any] = [None] * len(blocks)
    try:
        while waiting or shared.tasks:
            while waiting and len(shared.tasks) < width:
                start(waiting.pop())
            with shared.condition:
                shared.condition.wait_for(lambda: all(t.done or t.request is not None
                                                      for t in shared.tasks.values()))
                ended = [t for t in shared.tasks.values() if t.done]
                posted = [t for t in shared.tasks.values() if not t.done]
            for task in ended:
                task.thread.join()
                if task.error is not None:
                    raise task.error
                results[task.index] = task.value
                del shared.tasks[task.index]
                finished += 1
            if posted:
                _multiply(shared, posted)
            if callback is not None:
                callback(finished, len(blocks))
    finally:
        with shared.condition:
            shared.stopped = True
            shared.condition.notify_all()
    return results


def _multiply(shared: _Shared, posted: list[_Task]) -> None:
    """One product of A (and one of A.exact() where asked) for the posted rows, each scattered
    onto its block's coordinates; each algorithm gets its rows of the product back."""
    requests = [(task.index, task.request) for task in posted]
    for channel in (_OWN, _CHECKED, _EXACT):
        asked = [(index, request) for index, request in requests if request.channel == channel]
        if not asked:
            continue
        operator = shared.exact() if channel == _EXACT else shared.operator
        counts = [request.rows.shape[0] for _, request in asked]
        full = torch.zeros(sum(counts), operator.size, dtype=operator.dtype, device=operator.device)
        spans = torch.tensor([0, *counts]).cumsum(0).tolist()
        for (index, request), low, high in zip(asked, spans[:-1], spans[1:]):
            full[low:high, shared.indices[index]] = request.rows.to(operator.dtype)
        product = checked(operator, full) if channel == _CHECKED else operator(full)
        with shared.condition:
            for (index, request), low, high in zip(asked, spans[:-1], spans[1:]):
                request.product = product[low:high, shared.indices[index]]
                shared.tasks[index].request = None
            shared.condition.notify_all()
