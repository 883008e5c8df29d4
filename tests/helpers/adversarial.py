"""Shared by the adversarial-input tests (issue 16): a config for the sample MLP, and the contract of
DESIGN §7 for bad input: exit 2, nothing on stdout, exactly one stderr line that names the
culprit, no traceback, no file left behind, and every input's bytes unchanged."""

from __future__ import annotations

from pathlib import Path

from helpers.runners import Ran
from helpers.samples import DIGITS_FILE, MODELS

#: Options that keep a spectrum run to a fraction of a second.
FAST = ("--top", "1", "--set", "data.max_samples=200")


def write_config(path: Path, *, factory: str = f"{MODELS}:make_mlp", hidden: int = 32,
                 data: Path = DIGITS_FILE, extra_data: str = "", max_samples: int = 200,
                 extra: str = "") -> Path:
    """A config for the sample MLP on the digits; ``extra`` is appended as top-level YAML."""
    path.write_text(
        f"model:\n  factory: {factory}\n  kwargs: {{hidden: {hidden}}}\n"
        f"data:\n  path: {data}\n  max_samples: {max_samples}\n{extra_data}"
        f"device: cpu\n{extra}"
    )
    return path


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """The bytes of each input, to compare after the run."""
    return {p: p.read_bytes() for p in paths}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_one_error(ran: Ran, needles=(), *, code: int = 2, folder: Path | None = None,
                     before: list[str] | None = None, unchanged: dict[Path, bytes] | None = None
                     ) -> str:
    """Exit ``code``, empty stdout, one ``error:`` line on stderr holding every needle, no
    traceback; ``folder`` lists exactly ``before`` (nothing written, not even a temporary);
    each path in ``unchanged`` still has its bytes. Returns the line."""
    detail = ran.detail()
    assert ran.returncode == code, detail
    assert ran.stdout == "", detail
    assert "Traceback" not in ran.stderr, detail
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("error: "), detail
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    if folder is not None:
        assert listing(folder) == sorted(before or []), listing(folder)
    for path, data in (unchanged or {}).items():
        assert path.read_bytes() == data, f"{path} was changed"
    return line
