"""Writing results: stdout, or a file that is never half-written and never an input of the run.

A destination is checked before any work is done (``destination``): it must not be a file the
run reads (compared by resolved path and by inode, so a symlink or a hard link to the checkpoint
is caught), its folder must exist and be writable, and it must not be a folder. A regular file
(or a new one) is replaced atomically: written beside itself, then renamed over it, through a
symlink to its target. Anything else that accepts writes (``/dev/stdout``, a terminal, a FIFO)
is written in place: renaming over a device would replace the device node itself.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from landscape_cli.errors import LandscapeError


@dataclass(frozen=True)
class Destination:
    """Where ``option`` writes: the path as given, its resolved target, and how to write it."""

    option: str
    path: Path
    target: Path
    atomic: bool

    def error(self, message: str) -> LandscapeError:
        return LandscapeError(f"{self.option} {self.path}: {message}")


def _files_of(path: Path) -> Iterable[Path]:
    """The files an input stands for: itself, or a folder checkpoint's files."""
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file()]
    return [path] if path.exists() else []


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def destination(path: Path, option: str = "-o", inputs: Iterable[Path | str] = ()) -> Destination:
    """Check ``path`` as the destination of ``option`` before the run reads anything large."""
    dest = Destination(option, path, path.resolve(), atomic=True)
    for given in inputs:
        for file in _files_of(Path(given)):
            if _same_file(path, file):
                raise dest.error(f"is an input of this run ({file}); choose another file")
    try:
        mode = path.stat().st_mode  # follows symlinks, /dev/stdout's magic link included
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise dest.error(exc.strerror or str(exc)) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise dest.error("is a folder; give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise dest.error("is not a regular file, a device or a pipe")
        if not os.access(path, os.W_OK):
            raise dest.error("is not writable")
        return Destination(option, path, path, atomic=False)
    parent = dest.target.parent
    if not parent.is_dir():
        raise dest.error(f"{parent} is not a folder" if parent.exists()
                         else f"the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (mode is not None and not os.access(path, os.W_OK)):
        raise dest.error(f"cannot write in {parent}")
    return dest


def write_file(dest: Destination, write: Callable[[Path], None]) -> None:
    """``write(path)`` produces the file: at a temporary path beside the target, renamed over
    it once complete (a regular file), or directly at the target (a device or a pipe)."""
    try:
        if not dest.atomic:
            write(dest.target)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.target.name}.", suffix=dest.target.suffix,
                                   dir=dest.target.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a results file needs
            os.replace(tmp, dest.target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise dest.error(f"cannot write: {exc.strerror or exc}") from None


@contextmanager
def appending(dest: Destination, head: str) -> Iterator[Callable[[str], None]]:
    """A file that grows: ``head`` as its whole content (a regular file replaced at once, as
    ``write_file`` does, so that a kill before leaves the old file whole), then a function that
    appends text, flushed at each call, so that a killed run keeps every piece written."""
    if dest.atomic:
        write_file(dest, lambda path: path.write_text(head, encoding="utf-8"))
    try:
        handle = dest.target.open("a" if dest.atomic else "w", encoding="utf-8")
    except OSError as exc:
        raise dest.error(f"cannot write: {exc.strerror or exc}") from None

    def append(text: str) -> None:
        try:
            handle.write(text)
            handle.flush()
        except OSError as exc:
            raise dest.error(f"cannot write: {exc.strerror or exc}") from None

    with handle:
        if not dest.atomic:
            append(head)
        yield append


def emit(text: str, output: Destination | None) -> None:
    """Write ``text`` (one trailing newline) to ``output``, or to stdout (where a failed write
    ends the process as ``cli/entry.py`` says)."""
    text = text if text.endswith("\n") else text + "\n"
    if output is not None:
        write_file(output, lambda path: path.write_text(text, encoding="utf-8"))
        return
    sys.stdout.write(text)
    sys.stdout.flush()
