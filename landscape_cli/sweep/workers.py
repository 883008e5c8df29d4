"""A sweep's work (DESIGN §8): the line of each checkpoint, in this process or in worker
processes, each with one model, dataset and loss (a ``Session``) whose weights are swapped
between checkpoints, and each ending with its parent, however the parent ends.

A signal (SIGINT, SIGTERM) that stops the checkpoint in progress in this process leaves its
line with what was finished (``status: interrupted``, as a stopped command's report), written
before the sweep ends with 128 + the signal; a resumed sweep computes that checkpoint again.
With worker processes the checkpoints in progress are stopped with them and computed again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from landscape_cli import runner
from landscape_cli.errors import Interrupted, describe
from landscape_cli.options import RunOptions, jsonable
from landscape_cli.session import Session
from landscape_cli.sweep.plan import SCHEMA_VERSION, Job, Sweep, as_line, key_of

#: how often a worker without PR_SET_PDEATHSIG checks that its parent lives, in seconds
WATCH_S = 0.5
#: ``prctl`` option: the signal a Linux process gets when its parent ends
_PR_SET_PDEATHSIG = 1

#: the sessions of this process, by resolved config: one model, dataset and loss each
_SESSIONS: dict[str, Session] = {}


def _session(prepared: runner.Prepared) -> Session:
    key = json.dumps([str(prepared.config_path), prepared.config.sha256(),
                      prepared.config.model_dump(mode="json", exclude={"engine"}),
                      jsonable(list(prepared.run_options.params)), prepared.run_options.batches])
    if key not in _SESSIONS:
        _SESSIONS[key] = Session(prepared.config, prepared.load_options())
    return _SESSIONS[key]


def analyse(job: Job) -> dict[str, Any]:
    """The line of one checkpoint: its report with ``status: ok``, or ``status: error`` and the
    one-line message; the key to reuse it by. Stopped by a signal with a result so far, the
    interruption is raised with the line (``status: interrupted``) as its ``partial``."""
    prepared = None
    try:
        prepared = runner.prepare(job.command, job.checkpoint, RunOptions.of(job.shared), job.options)
        key = job.key or key_of(job, prepared.config.sha256(), prepared.config.seed)
        report, interrupted = runner.execute(prepared, session=_session(prepared))
    except Exception as exc:  # a broken checkpoint is one line, not the end of the sweep
        return {"schema_version": SCHEMA_VERSION, "command": job.command, "status": "error",
                "error": describe(exc), "checkpoint": {"path": job.checkpoint},
                "batch_key": _error_key(job, prepared)}
    line = {**report.to_dict(), "batch_key": key}
    if interrupted is not None:
        interrupted.partial = line  # what a sweep has so far of this checkpoint: its line
        raise interrupted
    return line


def _error_key(job: Job, prepared: runner.Prepared | None) -> str | None:
    """A failed checkpoint's key, when its config could be read (a rerun then skips it unless
    something changed); None otherwise (always retried)."""
    if prepared is None:
        return None
    return job.key or key_of(job, prepared.config.sha256(), prepared.config.seed)


def run_sweep(sweep: Sweep, write: Callable[[str], None], *, workers: int = 1,
              fail_fast: bool = False, progress: Callable[[int, str], None] | None = None
              ) -> list[dict[str, Any]]:
    """Analyse the jobs not reused, writing each line as it finishes (``write``: one JSON line,
    flushed); the lines of the whole sweep, reused ones first. Interrupted, the line of the
    checkpoint in progress is written (when it has one) before the interruption goes on."""
    done = {line["checkpoint"]["path"] for line in sweep.reused}
    pending = [job for job in sweep.jobs if job.checkpoint not in done]
    lines = list(sweep.reused)
    try:
        for count, line in enumerate(_results(pending, workers, fail_fast), 1):
            write(as_line(line))
            lines.append(line)
            if progress is not None:
                progress(len(sweep.reused) + count, line["checkpoint"]["path"])
            if fail_fast and line["status"] == "error":
                break
    except Interrupted as stop:
        if isinstance(stop.partial, dict):
            write(as_line(stop.partial))
        raise
    return lines


def _results(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[dict[str, Any]]:
    """The lines of ``jobs`` in order (one worker) or as they finish (several processes, each
    with its share of the cores)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield analyse(job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    import torch

    context = multiprocessing.get_context("spawn")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([d.strip() for d in visible.split(",") if d.strip()] if visible is not None
            else [str(i) for i in range(torch.cuda.device_count())])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, context.Value("i", 0), gpus, os.getpid()))
    try:
        futures = [pool.submit(analyse, job) for job in jobs]
        for future in as_completed(futures):
            line = future.result()
            yield line
            if fail_fast and line["status"] == "error":
                break
    except BaseException:  # a signal: the workers stop now, not after their checkpoints
        for child in multiprocessing.active_children():
            child.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(threads: int, counter, gpus: list[str], parent: int) -> None:
    """A worker's share of the cores, and with GPUs its own one (worker i sees the i-th GPU,
    round robin, as ``cuda``), set before it first touches CUDA; and its end with its parent."""
    _end_with(parent)
    if gpus:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    import torch

    torch.set_num_threads(threads)


def _end_with(parent: int) -> None:
    """End this process when ``parent`` ends, SIGKILL included: Linux sends SIGKILL at once
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread sees the process re-parented within
    ``WATCH_S``. A parent already gone ends it here."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watching thread alone
        pass
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="watch-parent", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(1)
