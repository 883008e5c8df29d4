"""The process entry point (``landscape``, ``python -m landscape_cli``). Signal handlers are
installed before anything heavy is imported, so that Ctrl-C or SIGTERM at any moment, the
seconds of importing torch included, end the process with one line and 128 + the signal's
number (130, 143), never a traceback. While importing, nothing has been written, so the
process ends at once: an exception raised into import machinery can be swallowed by a
library's ``except BaseException`` and the run would go on. Once the app is imported, the
signal raises ``Interrupted``, which unwinds the stack like KeyboardInterrupt: ``finally``
blocks run, an atomic ``-o`` write removes its temporary file, and an analysis can report its
result so far."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from landscape_cli.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


def _exit_now(signum: int, frame: object) -> None:
    os.write(2, f"error: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def _interrupt(signum: int, frame: object) -> None:
    _handle_with(_exit_now)  # a second signal while the first unwinds ends the process at once
    raise Interrupted(signum, signal.Signals(signum).name)


def _handle_with(handler) -> None:
    for handled in HANDLED:
        signal.signal(handled, handler)


@contextmanager
def importing() -> Iterator[None]:
    """A block that imports torch (seconds; the app itself does not): a signal in it ends the
    process at once, as during start-up, since import code may swallow an exception. Only
    where this entry point installed its handlers (not in-process, as under a test runner)."""
    if signal.getsignal(signal.SIGINT) is not _interrupt:
        yield
        return
    _handle_with(_exit_now)
    try:
        yield
    finally:
        _handle_with(_interrupt)


def main() -> None:
    _handle_with(_exit_now)
    from landscape_cli.cli.app import app

    _handle_with(_interrupt)
    try:
        app(prog_name="landscape")
    except Interrupted as stop:
        sys.stderr.write(f"error: interrupted by {stop}\n")
        sys.exit(stop.exit_code)
