"""The peak memory of a run (``cost.peak_memory_bytes``, DESIGN §4), for sizing a job.

On CUDA: the most memory the caching allocator held for tensors on the run's device
(``torch.cuda.max_memory_allocated``), since ``start``. On Linux: the process's peak resident
set size (``VmHWM``), reset at ``start`` where the kernel allows it (``/proc/self/clear_refs``),
so that each analysis of a sweep or a notebook counts its own peak. Not ``getrusage``'s max RSS:
Linux keeps that across ``exec``, so a run started by a large process (a test runner, a
notebook's shell) would report its parent's peak. Elsewhere: max RSS, the interpreter and
torch included, never reset.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def start(device: torch.device) -> None:
    """Count the peak from now. Where CUDA is not initialized yet nothing was allocated, so its
    peak starts at zero anyway (and nothing here initializes it)."""
    if device.type == "cuda":
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats(device)
        return
    # resets VmHWM to the current resident set (Linux ≥ 4.0); elsewhere, or where it is not
    # allowed, the peak counts from the process's start
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def _high_water_mark() -> int | None:
    """``VmHWM`` of /proc/self/status in bytes (None where there is none)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_bytes(device: torch.device) -> int:
    """Bytes at the peak on ``device`` (see the module's docstring)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    found = _high_water_mark()
    if found is not None:
        return found
    most = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(most if sys.platform == "darwin" else most * 1024)  # bytes on macOS, KiB on Linux
