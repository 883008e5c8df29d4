"""The peak memory of a run (``cost.peak_memory_bytes``, DESIGN §4), for sizing a job.

On CUDA: the most memory the caching allocator held for tensors on the run's device
(``torch.cuda.max_memory_allocated``), since ``start``. Elsewhere: the peak resident set size
of the process (max RSS), which no process can reset, so in a process that runs several
analyses (``batch``, a notebook) it is the largest so far, the interpreter and torch included.
"""

from __future__ import annotations

import resource
import sys

import torch


def start(device: torch.device) -> None:
    """Count the CUDA peak from now. Where CUDA is not initialized yet nothing was allocated,
    so the peak starts at zero anyway (and nothing here initializes it)."""
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Bytes at the peak on ``device`` (see the module's docstring)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    most = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(most if sys.platform == "darwin" else most * 1024)  # bytes on macOS, KiB on Linux
