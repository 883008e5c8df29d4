"""A sweep's plan (DESIGN §8): the checkpoints (paths, globs, stdin), deterministic shards, the
key of each checkpoint's line, and which lines of an earlier output a resumed sweep keeps.

A line's key is the sha256 of (the checkpoint's bytes, the resolved config, the command, its
options, the seed, the schema and tool versions): a line is reused exactly when all of these
are the same. A torn last line (a run killed mid-write) does not parse and is recomputed, and so
is a line a signal stopped (``status: interrupted``): it holds only what was finished.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from landscape_cli import __version__, runner
from landscape_cli.errors import LandscapeError
from landscape_cli.options import RunOptions, jsonable
from landscape_cli.paths import expand, natural

SCHEMA_VERSION = "1"


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
    found = {line["batch_key"]: line for line in read_lines(output)[0]
             if line.get("batch_key") and line.get("status") != "interrupted"}
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


def in_order(lines: list[dict[str, Any]], jobs: list[Job]) -> list[dict[str, Any]]:
    """The lines in the jobs' order (a resumed or parallel sweep writes them as they come)."""
    place = {job.checkpoint: i for i, job in enumerate(jobs)}
    return sorted(lines, key=lambda line: place.get(line.get("checkpoint", {}).get("path"), len(place)))


def merge(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The lines of several shard outputs, in the natural order of their checkpoints."""
    lines = [line for path in paths for line in read_lines(path)[0]]
    return sorted(lines, key=lambda line: natural(line.get("checkpoint", {}).get("path", "")))
