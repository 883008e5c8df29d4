"""Keep freed host memory in the process instead of handing it back to the OS (glibc only).

An analysis frees and allocates the same activation-sized buffers at every HVP. By default
glibc serves blocks above a dynamic threshold (128 KiB, growing to 32 MiB) with ``mmap`` and
returns free memory at the top of a heap to the OS once more than ``M_TRIM_THRESHOLD`` of it
is free, so every HVP faults the same pages in again, zero-filled by the kernel. Fixing the
mmap threshold at its ceiling and never trimming keeps those pages, which cuts the system
time of a long run several-fold (measured: ``benchmarks/README.md``). The resident set then
stays at its peak, which the analysis reaches anyway.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems; larger values are refused
NEVER_TRIM = (1 << 31) - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process, once; False where there is no
    glibc ``mallopt`` (macOS, musl) or it refused, and nothing changed."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    return (mallopt is not None
            and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
            and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1)
