"""SIGINT and SIGTERM, from the process's start to its end. Until the app is imported, a signal
ends the process at once with one line and 128 + the signal's number (130, 143), never a
traceback: nothing has been written yet, and an exception raised into import machinery can be
swallowed by a library's ``except BaseException`` and the run would go on. Once the app is
imported, the signal raises ``Interrupted``, which unwinds the stack like KeyboardInterrupt:
``finally`` blocks run, an atomic ``-o`` write removes its temporary file, and an analysis can
report its result so far. A command that imports torch later does so inside ``importing()``,
which ends the process at once again."""

from __future__ import annotations

import os
import signal
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


def starting() -> None:
    """From here a signal ends the process at once (the start-up: imports, nothing written)."""
    _handle_with(_exit_now)


def started() -> None:
    """From here a signal raises ``Interrupted`` (the app runs and can clean up)."""
    _handle_with(_interrupt)


@contextmanager
def importing() -> Iterator[None]:
    """A block that imports torch (seconds; the app itself does not): a signal in it ends the
    process at once, as during start-up, since import code may swallow an exception. Only
    where the entry point installed these handlers (not in-process, as under a test runner)."""
    if signal.getsignal(signal.SIGINT) is not _interrupt:
        yield
        return
    starting()
    try:
        yield
    finally:
        started()
