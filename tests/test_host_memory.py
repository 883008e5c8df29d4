"""Freed host memory stays in the process (glibc), so HVPs do not fault their buffers in again."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from landscape_cli.engine.host_memory import keep_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_stay_resident():
    assert keep_freed_memory() and keep_freed_memory()  # applied, and idempotent
    before = resident_bytes()
    buffers = [torch.ones(1 << 20) for _ in range(64)]  # 64 × 4 MiB, each page touched
    peak = resident_bytes()
    assert peak - before > 200 << 20
    del buffers
    # glibc's defaults would mmap these blocks (or trim the heap) and give all 256 MiB back
    assert resident_bytes() > peak - (16 << 20)
