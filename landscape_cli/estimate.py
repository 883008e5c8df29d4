"""What a long run will cost, told before it is spent: the seconds per Hessian-vector product and
per data pass are timed on the products and passes the run makes anyway, and the planned counts
turned into a one-line note (shown when over ``threshold_s``). The note is printed, never
reported: timing changes no number."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from landscape_cli.linalg.operator import LinearOperator, Wrapping

if TYPE_CHECKING:
    import torch

#: a gradient costs about three forward passes (one forward, a backward of about two)
PASSES_PER_GRADIENT = 3


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 45 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class CostEstimate:
    """Times a product (per row of its block) and the first data pass it is shown, then
    ``announce`` prints what a plan of {part: (HVPs, data passes)} will cost."""

    label: str
    notify: Callable[[str], None]
    hint: str
    threshold_s: float = 30.0
    clock: Callable[[], float] = time.perf_counter
    per_product: float | None = None
    per_pass: float | None = None
    said: bool = field(default=False, init=False)

    def timed(self, operator: LinearOperator, then: Callable[[], None]) -> TimedOperator:
        """``operator``, with its second product timed (the first may build what later ones
        reuse, such as a cached graph); ``then()`` runs once that is known."""
        return TimedOperator(operator, self, then)

    def timed_pass(self, evaluate: Callable[[], object]) -> object:
        """``evaluate()`` (one data pass), timed."""
        start = self.clock()
        out = evaluate()
        self.per_pass = self.clock() - start
        return out

    def announce(self, plan: dict[str, tuple[int, int]]) -> None:
        """Once: the note for ``plan`` if it will take over ``threshold_s``."""
        if self.said:
            return
        self.said = True
        per_product, per_pass = self.per_product or 0.0, self.per_pass or 0.0
        seconds = {part: hvps * per_product + passes * per_pass for part, (hvps, passes) in plan.items()}
        total = sum(seconds.values())
        if total <= self.threshold_s:
            return
        hvps = sum(h for h, _ in plan.values())
        passes = sum(p for _, p in plan.values())
        counts = " and ".join(
            text for text, count in ((f"{hvps} HVPs", hvps), (f"{passes} data passes", passes))
            if count)
        rates = " and ".join(
            text for text, known, count in (
                (f"{per_product:.2g} s per product", self.per_product, hvps),
                (f"{per_pass:.2g} s per pass", self.per_pass, passes)) if known is not None and count)
        dominant = max(seconds, key=seconds.__getitem__)
        self.notify(f"{self.label}: about {counts} ≈ {duration(total)} at {rates} (measured); "
                    f"{dominant} dominates; {self.hint}")


@dataclass
class TimedOperator(Wrapping):
    """An operator whose second product sets ``estimate.per_product`` (per row of its block);
    everything else is the wrapped operator's."""

    operator: LinearOperator
    estimate: CostEstimate
    then: Callable[[], None]
    calls: int = 0

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.estimate.per_product is not None or self.calls == 1:
            return self.operator(block)
        start = self.estimate.clock()
        out = self.operator(block)
        rows = block.shape[0] if block.dim() > 1 else 1
        self.estimate.per_product = (self.estimate.clock() - start) / rows
        self.then()
        return out
