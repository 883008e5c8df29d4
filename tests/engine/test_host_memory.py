"""Freed host memory stays in the process (glibc), so HVPs do not fault their buffers in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from landscape_cli.engine.host_memory import keep_freed_memory

# In a fresh process (this one may hold freed memory already): MiB resident after allocating
# 64 × 4 MiB tensors, each page touched, and after freeing them.
PROBE = """
import os, sys, torch
from landscape_cli.engine.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # applied, and idempotent
def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
before = resident()
buffers = [torch.ones(1 << 20) for _ in range(64)]
grown = resident() - before
del buffers
print(grown, resident() - before)
"""


def resident_growth(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    grown, kept = out.stdout.split()
    return int(grown), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_stay_resident():
    assert keep_freed_memory()
    grown, kept = resident_growth("keep")
    assert grown > 240 and kept > grown - 16
    grown, kept = resident_growth("default")  # glibc's defaults give all of it back
    assert grown > 240 and kept < 16
