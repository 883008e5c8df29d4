"""``batch --follow``: the checkpoints of a training run's folder as they appear, each handed
over once, when complete, never half-written.

A file is complete when it appeared by a rename (its modification time is older than the poll
before the one that first saw it: a rename keeps the time the file was written), or when its
size and modification time stayed the same over two polls; a torch zip must also end in a
readable central directory. A folder (a Hugging Face save) is complete when the files its index
names, or its single weights file, are. ``--until-idle`` ends a follow that saw nothing new for
that long.
"""

from __future__ import annotations

import glob
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from landscape_cli.errors import LandscapeError
from landscape_cli.loading.checkpoint import HF_FILES
from landscape_cli.paths import natural

#: seconds between two looks at the folder
POLL_S = 1.0
_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """``30s``, ``10m``, ``2h`` (or plain seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise LandscapeError(f"--until-idle {text}: expected a duration such as 30s, 10m or 2h")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _files_of(path: Path) -> list[Path] | None:
    """The files a checkpoint is made of (a folder's weights: its index and what that names,
    or its single weights file), None while they are not all there."""
    if not path.is_dir():
        return [path]
    present = [name for name in HF_FILES if (path / name).is_file()]
    if not present:
        return None
    entry = path / present[0]
    if not entry.name.endswith(".index.json"):
        return [entry]
    try:
        names = set(json.loads(entry.read_text()).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError):
        return None  # the index itself is still being written
    files = [entry, *(path / name for name in sorted(names))]
    return files if all(f.is_file() for f in files) else None


def _signature(path: Path) -> tuple | None:
    """(size, mtime) of each of the checkpoint's files, None while one is missing."""
    files = _files_of(path)
    if files is None:
        return None
    try:
        return tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return None


def _readable(path: Path) -> bool:
    """Whether each of the checkpoint's files is whole where its format can tell: a torch zip
    ends in its central directory, a safetensors file is as long as its header says."""
    return all(_whole(f) for f in _files_of(path) or [])


def _whole(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
            if head[:4] == b"PK\x03\x04":
                return zipfile.is_zipfile(file)
            if file.suffix == ".safetensors":
                size = int.from_bytes(head, "little")
                header = json.loads(handle.read(size))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                          default=0)
                return file.stat().st_size == 8 + size + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return True


@dataclass
class Watcher:
    """The paths matching ``patterns`` (globs), each returned once by ``ready`` when complete."""

    patterns: list[str]
    poll_s: float = POLL_S
    handed: set[str] = field(default_factory=set)
    #: path → its files' (size, mtime) at the last poll
    _seen: dict[str, tuple | None] = field(default_factory=dict)
    _last_poll: float | None = None

    def ready(self) -> list[str]:
        """The paths complete since the last call, in natural order."""
        now = time.time()
        found = sorted({p for pattern in self.patterns for p in glob.glob(pattern, recursive=True)},
                       key=natural)
        out = []
        for path in found:
            if path in self.handed:
                continue
            previous, new = self._seen.get(path), path not in self._seen
            signature = self._seen[path] = _signature(Path(path))
            if signature is None:
                continue
            newest = max(mtime for _, mtime in signature) / 1e9
            stable = not new and previous == signature
            renamed = new and newest < (self._last_poll if self._last_poll is not None else now - self.poll_s)
            if (stable or renamed) and _readable(Path(path)):
                out.append(path)
                self.handed.add(path)
        self._last_poll = now
        return out
