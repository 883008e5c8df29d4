"""The process entry point (``landscape``, ``python -m landscape_cli``). Signal handlers are
installed before anything heavy is imported, so that Ctrl-C or SIGTERM at any moment, the
seconds of importing torch included, end the process with one line and 128 + the signal's
number (130, 143), never a traceback. The exception unwinds the stack like KeyboardInterrupt,
so ``finally`` blocks run and an atomic ``-o`` write removes its temporary file."""

from __future__ import annotations

import os
import signal
import sys

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the run to stop. Not an ``Exception``: nothing that handles errors
    turns it into an error report."""

    def __init__(self, signum: int):
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def _exit_now(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def _interrupt(signum: int, frame: object) -> None:
    # A second signal while the first unwinds ends the process at once.
    for handled in HANDLED:
        signal.signal(handled, _exit_now)
    raise Interrupted(signum)


def main() -> None:
    for handled in HANDLED:
        signal.signal(handled, _interrupt)
    try:
        from landscape_cli.cli.app import app

        app(prog_name="landscape")
    except Interrupted as stop:
        sys.stderr.write(f"error: interrupted by {stop}\n")
        sys.exit(stop.exit_code)
