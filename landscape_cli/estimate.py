"""What a long run will cost, told before it is spent: the seconds per Hessian-vector product and
per data pass are timed on the products and passes the run makes anyway, and the planned counts
turned into a one-line note (shown when over ``threshold_s``). The note is printed, never
reported: timing changes no number."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

    def timed_products(self, matvec: Callable[[torch.Tensor], torch.Tensor],
                       then: Callable[[], None]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``matvec``, with its second call timed (the first may build what later ones reuse,
        such as a cached graph); ``then()`` runs once that is known."""
        calls = 0

        def timed(vectors: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            if self.per_product is not None or calls == 1:
                return matvec(vectors)
            start = self.clock()
            out = matvec(vectors)
            self.per_product = (self.clock() - start) / (vectors.shape[0] if vectors.dim() > 1 else 1)
            then()
            return out

        return timed

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
