"""The process entry point (``landscape``, ``python -m landscape_cli``): signal handlers first
(``cli/signals.py``), before anything heavy is imported, then the app, whose writes to stdout
all end here when stdout cannot take them.

A write to stdout fails when its reader went away (``| head``: exit 141, quietly, as for any
Unix filter) or when the file behind it cannot grow (``> /dev/full``, a full disk: one line
and exit 2, bad input). Whatever writes it (a report, a batch line, ``--help``, ``--version``),
the failure is raised as ``StdoutFailed`` by the process's stdout itself, so that it is told
apart from any other ``OSError`` and no handler on the way (Click's own included, which would
end a closed pipe with 1) turns it into something else."""

from __future__ import annotations

import errno
import io
import os
import sys

from landscape_cli.cli import signals
from landscape_cli.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, Interrupted


class StdoutFailed(BaseException):
    """Writing to stdout failed. A ``BaseException``, like ``Interrupted``, so that no handler
    of errors turns it into an error report on its way here."""

    def __init__(self, error: OSError):
        self.error = error
        super().__init__(error.strerror or str(error))


class _Stdout(io.FileIO):
    """File descriptor 1, whose failed writes raise ``StdoutFailed``."""

    def write(self, data) -> int | None:
        try:
            return super().write(data)
        except OSError as exc:
            raise StdoutFailed(exc) from None


def _guard_stdout() -> None:
    """Put ``_Stdout`` under ``sys.stdout``, with the same encoding and line buffering."""
    given = sys.stdout
    try:
        fd = given.fileno()
    except (AttributeError, OSError, ValueError):  # fd 1 closed, or stdout is no file
        return
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Stdout(fd, "w", closefd=False)),
                                  encoding=given.encoding, errors=given.errors,
                                  line_buffering=given.line_buffering)


def main() -> None:
    signals.starting()
    _guard_stdout()
    from landscape_cli.cli.app import app

    signals.started()
    try:
        try:
            app(prog_name="landscape")
        finally:
            if sys.stdout is not None:  # what is still buffered fails here, not at exit
                sys.stdout.flush()
    except Interrupted as stop:
        sys.stderr.write(f"error: interrupted by {stop}\n")
        sys.exit(stop.exit_code)
    except StdoutFailed as failed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing is left to fail at exit
        if failed.error.errno == errno.EPIPE:
            sys.exit(EXIT_BROKEN_PIPE)
        sys.stderr.write(f"error: cannot write to stdout: {failed}\n")
        sys.exit(EXIT_BAD_INPUT)
