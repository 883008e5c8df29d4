"""Ranks of a torchrun launch started by hand (its environment), so that each rank's own output
and exit code are seen: for the tests of the data-parallel and sharded engines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from helpers.runners import start_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: list[str], count: int = 2) -> list[subprocess.Popen]:
    """``count`` ranks of ``landscape ARGS`` started as torchrun would start them."""
    port = free_port()
    processes = []
    for rank in range(count):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(count),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(start_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True))
    return processes


def finish(processes: list[subprocess.Popen], within: float) -> list[tuple[int, str, str]]:
    """Each rank's (exit code, stdout, stderr), killing whatever still runs after ``within``
    seconds."""
    deadline = time.monotonic() + within
    done = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return done


def lose_a_rank(args: list[str], settle: float) -> tuple[int, str, float]:
    """Two ranks of ``landscape ARGS``; rank 1 is killed after ``settle`` seconds (both still
    running then), and rank 0's exit code, stderr and seconds it took to stop are returned."""
    processes = start_ranks(args)
    try:
        time.sleep(settle)
        assert processes[0].poll() is None and processes[1].poll() is None
        os.killpg(processes[1].pid, signal.SIGKILL)
        started = time.monotonic()
        code, _, err = finish(processes[:1], within=60)[0]
        return code, err, time.monotonic() - started
    finally:
        finish(processes, within=1)
