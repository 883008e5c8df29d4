"""What the algorithms hold of their own, planned against the operator's ``memory_left()`` before
the first product (issue 27 §0).

Each algorithm declares the bytes it will hold as a function of n, its steps, its k and the
storage dtype (``lanczos_bytes``, ``slq_bytes``, ``hutchpp_bytes``, ``ascent_bytes``); one chooser
per Krylov basis (``plan_lanczos``) takes the first way that fits, in this order:

1. float64 on the operator's device, grown by doubling as steps are taken, up to as many
   vectors as fit (today's arithmetic, bit for bit); where they fill before the run converges,
   Lanczos restarts around the wanted Ritz vectors (thick restart, Wu & Simon 2000), so top-k
   runs at any n once ``restart_minimum`` vectors fit;
2. where float64 cannot hold that many: stored in float32, the arithmetic still float64, if the
   tolerance allows (``float32_storage_keeps``), twice the vectors;
3. else held on the host while the products run on the device (a GPU operator only);
4. none: ``NoMemory``, one line naming what would fit.

A budget of 0 (``--memory-budget 0``: always stream) asks for the least each algorithm works
with, and is never refused: Lanczos restarts over ``restart_minimum`` vectors, SLQ keeps no
bases, Hutch++ no sketch and one probe at a time.

Float32 storage comes after a bounded float64 basis, not before: it changes the last digits of
every number, while a bound that a run never reaches changes none.

A basis grown by doubling holds, while it copies itself into its next size, the old rows and
the new ones: a bound of m rows peaks at m + (the size before the last doubling) rows. A basis
that restarts (bounded below its steps) takes its m rows at once instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape_cli.errors import LandscapeError

#: float64 vectors of n that Lanczos holds beside its basis while it steps: the vector, the
#: previous one, the product (worked on in place) and one temporary (a float32 operator's
#: product, or a float64 basis' combination); a fresh random vector at breakdown replaces it
LANCZOS_WORK = 4
#: float64 vectors of n per wanted pair once the steps are done (their vectors freed): the Ritz
#: vectors, their products, and a float32 operator's product before it is widened
#: (``lanczos._measured``)
LANCZOS_PER_WANTED = 3
#: vectors of n (in the operator's dtype) per SLQ run beside the basis: q, the previous q, the
#: product and the orthogonalization's temporaries
SLQ_WORK = 5
#: without full reorthogonalization an SLQ run keeps only its three-term recurrence
SLQ_LOCAL = 3
#: Hutch++'s sketch is held three times over (the sketch's images, their Q, the kept basis)
#: and a probe block twice (the probes and their products)
HUTCHPP_COPIES, PROBE_COPIES = 3, 2
#: vectors of n the sharpness ascent holds (x, the previous x, the best, z, the gradient, a step)
ASCENT_VECTORS = 6
#: bytes of a float64 temporary a float32 or host basis is read through, a slice of columns at
#: a time
CHUNK_BYTES = 64 << 20
#: float32 storage rounds every stored vector by up to u = 2⁻²⁴, which adds at most about
#: u·‖A‖·√m to a residual of a basis of m vectors (measured: ``lanczos``); it is chosen only
#: where that stays below 1/FLOAT32_STORAGE of the tolerance asked for
FLOAT32_STORAGE = 10
#: a restarted basis keeps the wanted pairs, as many more, and room for two new steps
RESTART_SPARE = 4


def restart_minimum(wanted: int) -> int:
    """The fewest basis vectors a restarted Lanczos for ``wanted`` pairs works with."""
    return 2 * wanted + RESTART_SPARE


def before_last_doubling(rows: int) -> int:
    """The basis' size before it grew to ``rows`` (1, 2, 4, ... then ``rows``)."""
    return 0 if rows <= 1 else 1 << (rows - 1).bit_length() - 1


def basis_peak(rows: int) -> int:
    """Rows held at once by a basis that grows by doubling to ``rows``: the last copy's both."""
    return rows + before_last_doubling(rows)


def basis_bytes(n: int, rows: int, storage: torch.dtype, restarted: bool) -> int:
    """A basis of at most ``rows`` vectors of n in ``storage``: taken at once where it restarts,
    else grown by doubling (``basis_peak``)."""
    return (rows if restarted else basis_peak(rows)) * n * storage.itemsize


def lanczos_bytes(n: int, rows: int, wanted: int, storage: torch.dtype = torch.float64,
                  on_host: bool = False, restarted: bool = False) -> int:
    """Lanczos' own device bytes: a basis of at most ``rows`` vectors in ``storage`` (none on
    the device when it is on the host), its working vectors or, once the steps are done, the
    Ritz vectors of the ``wanted`` pairs, and a float64 slice it is read through when not
    float64."""
    basis = 0 if on_host else basis_bytes(n, rows, storage, restarted)
    chunk = 0 if storage == torch.float64 and not on_host else min(CHUNK_BYTES, rows * n * 8)
    return basis + max(LANCZOS_WORK, LANCZOS_PER_WANTED * wanted) * n * 8 + chunk


def slq_bytes(n: int, runs: int, steps: int, itemsize: int, reorthogonalize: bool) -> int:
    """SLQ's own bytes: each run's basis (grown by doubling to ``steps`` rows), or only its
    three-term recurrence, and its working vectors, in the operator's dtype."""
    kept = basis_peak(steps) if reorthogonalize else SLQ_LOCAL
    return runs * (kept + SLQ_WORK) * n * itemsize


def hutchpp_bytes(n: int, sketch: int, block: int, itemsize: int) -> int:
    """Hutch++'s own bytes: the sketch (three copies) and a block of probes (two)."""
    return (HUTCHPP_COPIES * sketch + PROBE_COPIES * block) * n * itemsize


def ascent_bytes(n: int, itemsize: int) -> int:
    """The sharpness ascent's own bytes: a few vectors of n (``ASCENT_VECTORS``)."""
    return ASCENT_VECTORS * n * itemsize


def host_memory() -> int:
    """Bytes a basis on the host may take: 40% of the machine's RAM (its total, so that the
    choice, hence the numbers, do not depend on what else runs)."""
    return int(0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class BasisLayout:
    """How a Krylov basis is held: ``storage`` dtype, on the host or the operator's device, at
    most ``max_vectors`` rows, restarted when they fill (else they are never full)."""

    storage: torch.dtype = torch.float64
    on_host: bool = False
    max_vectors: int = 0
    restarted: bool = False

    @property
    def exact(self) -> bool:
        """Whether the basis is today's: float64 on the device (no slice-wise arithmetic)."""
        return self.storage == torch.float64 and not self.on_host

    def describe(self) -> dict[str, object]:
        """For the report: ``storage`` float64, float32 or host, ``restarted``, ``max_vectors``."""
        storage = "host" if self.on_host else str(self.storage).removeprefix("torch.")
        return {"storage": storage, "restarted": self.restarted, "max_vectors": self.max_vectors}


class NoMemory(LandscapeError):
    """The algorithm's vectors fit no way in the memory left (exit 2, never an allocation
    failure)."""


def in_units(count: int) -> str:
    """Bytes in the largest binary unit that keeps a whole number in front: 1.50 GiB, 3.20 MiB."""
    for power, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if count >= 2**power:
            return f"{count / 2**power:,.2f} {unit}"
    return f"{count:,} bytes"


def float32_storage_keeps(tol: float, rows: int) -> bool:
    """Whether a float32 basis of ``rows`` vectors keeps residuals within a tenth of ``tol``:
    u·√rows ≤ tol/10 (at the default tol 1e-4, up to 27,000 vectors)."""
    return torch.finfo(torch.float32).eps / 2 * math.sqrt(rows) <= tol / FLOAT32_STORAGE


def _most_rows(fits: Callable[[int], bool], cap: int) -> int:
    """The largest m ≤ cap for which ``fits(m)`` (monotone: fewer rows fit whenever more do),
    0 where none does."""
    low, high = 0, cap
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def plan_lanczos(n: int, steps: int, wanted: int, tol: float, memory: int | None,
                 device: torch.device, host: int | None = None) -> BasisLayout:
    """The first way (module docstring) a Lanczos basis for at most ``steps`` steps and
    ``wanted`` pairs fits ``memory`` bytes (None: no limit) on ``device``, with ``host`` bytes on
    the host (default ``host_memory()``) where the device is not the CPU: as many rows as fit, up
    to ``steps``, restarted when they fill before ``steps``."""
    least = min(steps, restart_minimum(wanted))
    if memory is None:
        return BasisLayout(max_vectors=steps)
    if memory == 0:
        return BasisLayout(max_vectors=least, restarted=least < steps)
    ways = [(torch.float64, False), (torch.float32, False)]
    if device.type != "cpu":
        ways.append((torch.float64, True))
    host = host_memory() if host is None else host
    for storage, on_host in ways:
        def fits(rows: int, storage=storage, on_host=on_host) -> bool:
            restarted = rows < steps
            held = basis_bytes(n, rows, storage, restarted)
            return (lanczos_bytes(n, rows, wanted, storage, on_host, restarted) <= memory
                    and (not on_host or held <= host))

        rows = _most_rows(fits, steps)
        if rows >= least and (storage == torch.float64 or float32_storage_keeps(tol, rows)):
            return BasisLayout(storage, on_host, rows, restarted=rows < steps)
    raise _no_room(n, wanted, least, memory)


def no_memory(what: str, needed: int, memory: int, fewer: str = "") -> NoMemory:
    """The one line when ``what`` needs ``needed`` bytes at the least and ``memory`` are left:
    how much more budget would fit, or ``fewer`` (what to ask less of), or the other ways."""
    ways = [f"raise --memory-budget by {in_units(needed - memory)} or more",
            *([fewer] if fewer else []),
            "where the engine keeps its graph, --hvp-strategy stream or fd (no kept graph)"]
    return NoMemory(f"{what} needs at least {in_units(needed)} for its vectors, but the memory budget "
                    f"leaves {in_units(memory)}: " + "; or ".join(ways))


def _no_room(n: int, wanted: int, least: int, memory: int) -> NoMemory:
    """``no_memory`` for Lanczos: a restarted basis of ``least`` float32 vectors, or fewer pairs."""
    fewer = max((k for k in range(1, wanted)
                 if lanczos_bytes(n, restart_minimum(k), k, torch.float32, restarted=True) <= memory),
                default=0)
    return no_memory(f"Lanczos for {wanted} eigenpair(s) of {n:,} parameters (a restarted basis "
                     f"of {least} float32 vectors)",
                     lanczos_bytes(n, least, wanted, torch.float32, restarted=True),
                     memory, f"ask --top {fewer} (fewer pairs)" if fewer else "")
