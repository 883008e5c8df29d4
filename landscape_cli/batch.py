"""Sweeps over checkpoint sets (DESIGN §8): one JSON line per checkpoint, appended and flushed as
each finishes, keyed so that a killed run resumes where it stopped; deterministic shards; one
model, dataset and loss per worker process (a ``Session``), only the weights swapped between
checkpoints; and the trend of the main number across training.

A line's key is the sha256 of (the checkpoint's bytes, the resolved config, the command, its
options, the seed, the schema and tool versions): a line is reused exactly when all of these
are the same. A torn last line (a run killed mid-write) does not parse and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from landscape_cli import __version__, runner
from landscape_cli.errors import LandscapeError
from landscape_cli.options import RunOptions, jsonable
from landscape_cli.paths import expand, natural
from landscape_cli.session import Session

SCHEMA_VERSION = "1"
#: the number a sweep's trend follows, by command (sharpness: its first measure)
MAIN = {"spectrum": "lambda_max", "trace": "trace", "classify-critical-point": "lambda_min"}
#: metadata keys that order checkpoints in training, most precise first
STEP_KEYS = ("global_step", "step", "epoch")


def discover(patterns: Iterable[str], stdin: Iterable[str] = ()) -> list[str]:
    """Checkpoint paths from paths and glob patterns (``paths.expand``), ``-`` for one path per
    line of ``stdin``; duplicates dropped."""
    found: list[str] = []
    for pattern in patterns:
        if pattern == "-":
            found += [line.strip() for line in stdin if line.strip()]
        else:
            found += expand(pattern)
    return list(dict.fromkeys(found))


def shard(paths: list[str], spec: str | None) -> list[str]:
    """``I/N``: every N-th path of the sorted set from the I-th (1-based), so that the N shards
    cover the set exactly once whichever scheduler runs them."""
    if spec is None:
        return paths
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise LandscapeError(f"--shard {spec}: expected I/N with 1 ≤ I ≤ N, e.g. 2/8")
    index, count = int(match[1]), int(match[2])
    return sorted(paths, key=natural)[index - 1::count]


def content_digest(path: str) -> str:
    """sha256 of a checkpoint file's bytes, or of every file of a folder (names included)."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if root.is_dir():
            digest.update(str(file.relative_to(root)).encode())
        try:
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()


@dataclass(frozen=True)
class Job:
    """One checkpoint to analyse, and what its line's key is made of."""

    checkpoint: str
    command: str
    shared: dict[str, Any]
    options: dict[str, Any]
    #: the line's key, when the plan already computed it (a resumed sweep)
    key: str | None = None


def key_of(job: Job, config_sha256: str, seed: int) -> str:
    """The line's key: everything that shapes its content (the checkpoint's path and bytes,
    the resolved config, the command, its options and the shared ones such as --params,
    --batches and --fail-if, the seed, the versions)."""
    parts = [job.checkpoint, content_digest(job.checkpoint), config_sha256, job.command,
             {k: jsonable(v) for k, v in sorted(job.options.items())},
             {k: jsonable(v) for k, v in sorted(job.shared.items()) if k not in ("config", "set")},
             seed, SCHEMA_VERSION, __version__]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- one worker

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
    one-line message; the key to reuse it by."""
    prepared = None
    try:
        prepared = runner.prepare(job.command, job.checkpoint, RunOptions.of(job.shared), job.options)
        key = job.key or key_of(job, prepared.config.sha256(), prepared.config.seed)
        report, _ = runner.execute(prepared, session=_session(prepared))
        return {**report.to_dict(), "batch_key": key}
    except Exception as exc:  # a broken checkpoint is one line, not the end of the sweep
        message = str(exc) if isinstance(exc, LandscapeError) else \
            f"internal error: {type(exc).__name__}: {exc}"
        return {"schema_version": SCHEMA_VERSION, "command": job.command, "status": "error",
                "error": " ".join(message.split()), "checkpoint": {"path": job.checkpoint},
                "batch_key": _error_key(job, prepared)}


def _error_key(job: Job, prepared: runner.Prepared | None) -> str | None:
    """A failed checkpoint's key, when its config could be read (a rerun then skips it unless
    something changed); None otherwise (always retried)."""
    if prepared is None:
        return None
    return job.key or key_of(job, prepared.config.sha256(), prepared.config.seed)


def _init_worker(threads: int, counter, gpus: list[str]) -> None:
    """A worker's share of the cores, and with GPUs its own one (worker i sees the i-th GPU,
    round robin, as ``cuda``), set before it first touches CUDA."""
    if gpus:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    import torch

    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the sweep


def read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of an output file that parse, and the byte length of that good prefix (a
    torn last line is dropped: the run that wrote it was killed mid-write)."""
    lines, good = [], 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                lines.append(json.loads(raw))
            except ValueError:
                break
            good += len(raw)
    return lines, good


@dataclass
class Sweep:
    """A sweep's plan: its jobs (with the keys the plan computed) and the lines it reuses."""

    jobs: list[Job]
    reused: list[dict[str, Any]] = field(default_factory=list)


def plan(jobs: list[Job], output: Path | None, resume: bool) -> Sweep:
    """The sweep: which lines of an existing output are kept (their key matches a job's), in
    the jobs' order, and which jobs remain."""
    sweep = Sweep(list(jobs))
    if output is None or not resume or not output.exists():
        return sweep
    found = {line.get("batch_key"): line for line in read_lines(output)[0] if line.get("batch_key")}
    for i, job in enumerate(jobs):
        try:
            prepared = runner.prepare(job.command, job.checkpoint, RunOptions.of(job.shared), job.options)
        except LandscapeError:
            continue  # computed again: its error line says why
        sweep.jobs[i] = replace(job, key=key_of(job, prepared.config.sha256(),
                                                             prepared.config.seed))
        if sweep.jobs[i].key in found:
            sweep.reused.append(found[sweep.jobs[i].key])
    return sweep


def as_line(line: dict[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":"), allow_nan=False)


def run_sweep(sweep: Sweep, write: Callable[[str], None], *, workers: int = 1,
              fail_fast: bool = False, progress: Callable[[int, str], None] | None = None
              ) -> list[dict[str, Any]]:
    """Analyse the jobs not reused, writing each line as it finishes (``write``: one JSON line,
    flushed); the lines of the whole sweep, reused ones first."""
    done = {line["checkpoint"]["path"] for line in sweep.reused}
    pending = [job for job in sweep.jobs if job.checkpoint not in done]
    lines = list(sweep.reused)
    for count, line in enumerate(_results(pending, workers, fail_fast), 1):
        write(as_line(line))
        lines.append(line)
        if progress is not None:
            progress(len(sweep.reused) + count, line["checkpoint"]["path"])
        if fail_fast and line["status"] == "error":
            break
    return lines


def _results(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[dict[str, Any]]:
    """The lines of ``jobs`` in order (one worker) or as they finish (several processes, each
    with its share of the cores)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield analyse(job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([d.strip() for d in visible.split(",") if d.strip()] if visible is not None
            else [str(i) for i in range(torch.cuda.device_count())])
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads, context.Value("i", 0), gpus)) as pool:
        futures = [pool.submit(analyse, job) for job in jobs]
        for future in as_completed(futures):
            line = future.result()
            yield line
            if fail_fast and line["status"] == "error":
                for other in futures:
                    other.cancel()
                return


def in_order(lines: list[dict[str, Any]], jobs: list[Job]) -> list[dict[str, Any]]:
    """The lines in the jobs' order (a resumed or parallel sweep writes them as they come)."""
    place = {job.checkpoint: i for i, job in enumerate(jobs)}
    return sorted(lines, key=lambda line: place.get(line.get("checkpoint", {}).get("path"), len(place)))


def merge(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The lines of several shard outputs, in the natural order of their checkpoints."""
    lines = [line for path in paths for line in read_lines(path)[0]]
    return sorted(lines, key=lambda line: natural(line.get("checkpoint", {}).get("path", "")))


# ----------------------------------------------------------------------------- the trend


def main_metric(line: dict[str, Any]) -> tuple[str, float | None]:
    """The number a line's trend follows, and its name."""
    results = line.get("results") or {}
    if line.get("command") == "sharpness":
        measures = results.get("measures") or {}
        name = next(iter(measures), "lambda_max")
        return name, (measures.get(name) or {}).get("value")
    name = MAIN.get(line.get("command", ""), "loss")
    value = results.get(name)
    if value is None and name == "lambda_max":
        value = (results.get("top_eigenvalues") or [None])[0]
    return name, value


def step_of(line: dict[str, Any]) -> float | None:
    """A checkpoint's place in training: its metadata's global_step / step / epoch, else the
    last number in its path."""
    checkpoint = line.get("checkpoint") or {}
    for key in STEP_KEYS:
        if isinstance(checkpoint.get(key), (int, float)):
            return float(checkpoint[key])
    numbers = re.findall(r"\d+", Path(checkpoint.get("path", "")).name)
    return float(numbers[-1]) if numbers else None


def trend(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per checkpoint, in training order: path, step, status, the main number, the
    gates it failed."""
    rows = []
    for line in lines:
        name, value = main_metric(line) if line.get("status") == "ok" else (None, None)
        rows.append({"checkpoint": line.get("checkpoint", {}).get("path"), "step": step_of(line),
                     "status": line.get("status"), "metric": name, "value": value,
                     "failed": [g["expr"] for g in line.get("gates", []) if g.get("violated")],
                     "error": line.get("error")})
    return sorted(rows, key=lambda r: (r["step"] is None, r["step"] or 0, natural(r["checkpoint"] or "")))


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """The values as block heights (a space where a number is missing)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(" " if v is None or not math.isfinite(v)
                   else SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def markdown_summary(rows: list[dict[str, Any]], command: str) -> str:
    """The trend as Markdown (a CI job summary)."""
    metric = next((r["metric"] for r in rows if r["metric"]), MAIN.get(command, "value"))
    failed = [r for r in rows if r["status"] != "ok" or r["failed"]]
    out = [f"### landscape batch --command {command}", "",
           f"{len(rows)} checkpoint(s), {sum(r['status'] == 'ok' for r in rows)} ok, "
           f"{sum(r['status'] != 'ok' for r in rows)} failed, "
           f"{sum(bool(r['failed']) for r in rows)} with violated gates. "
           f"Trend of {metric}: `{sparkline([r['value'] for r in rows])}`", "",
           f"| checkpoint | step | {metric} | status |", "|---|---|---|---|"]
    for r in rows:
        value = "–" if r["value"] is None else f"{r['value']:.6g}"
        step = "–" if r["step"] is None else f"{r['step']:g}"
        status = r["status"] if r["status"] != "ok" else ("gate failed: " + ", ".join(r["failed"])
                                                          if r["failed"] else "ok")
        if r["error"]:
            status += f": {r['error']}"
        out.append(f"| `{r['checkpoint']}` | {step} | {value} | {status} |")
    if failed:
        out += ["", f"{len(failed)} checkpoint(s) need attention."]
    return "\n".join(out) + "\n"
