"""The two ways the tests run the real CLI, both without $LANDSCAPE_CONFIG and both giving a
``Ran``: in process through Typer's runner (``invoke``: stdout and stderr apart), and as
``python -m landscape_cli`` in a real process (``run_process``, or ``start_process`` for a test
that signals the process or reads it while it runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from helpers.samples import ROOT


@dataclass(frozen=True)
class Ran:
    """One CLI run's exit code and streams; ``output`` is both streams as a terminal shows
    them (in process, interleaved as written; in a real process, stdout then stderr)."""

    returncode: int
    stdout: str
    stderr: str
    output: str

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.stdout)

    def detail(self) -> str:
        return f"rc={self.returncode}\nstdout={self.stdout!r}\nstderr={self.stderr!r}"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without $LANDSCAPE_CONFIG, at a narrow width without colour
    (a narrow terminal must not wrap the error line), with ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k != "LANDSCAPE_CONFIG"}
    env.update(NO_COLOR="1", COLUMNS="60")
    env.update(extra)
    return env


def invoke(args, *, cwd: Path | None = None, input: str | None = None,
           env: dict[str, str | None] | None = None, app=None) -> Ran:
    """``landscape ARGS`` in process (``app``: another Typer app than the real one), in ``cwd``,
    with ``input`` on stdin; ``env`` sets variables (None removes one) for the run."""
    if app is None:
        from landscape_cli.cli.app import app
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], input=input,
                                    env={"LANDSCAPE_CONFIG": None, **(env or {})},
                                    catch_exceptions=False)
    finally:
        os.chdir(old)
    return Ran(result.exit_code, result.stdout, result.stderr, result.output)


def start_process(args, *, cwd: Path = ROOT, env: dict[str, str] | None = None,
                  **popen) -> subprocess.Popen:
    """``python -m landscape_cli ARGS`` started in ``cwd`` in ``clean_env(**env)``; ``popen``
    as ``subprocess.Popen`` takes it (streams, text, start_new_session)."""
    return subprocess.Popen([sys.executable, "-m", "landscape_cli", *map(str, args)], cwd=cwd,
                            env=clean_env(**(env or {})), **popen)


def run_process(args, *, cwd: Path = ROOT, timeout: float = 300, input: str | None = None,
                env: dict[str, str] | None = None, stdout=subprocess.PIPE) -> Ran:
    """``python -m landscape_cli ARGS`` run to its end (killed after ``timeout`` seconds), with
    ``input`` on stdin; ``stdout`` may be an open file instead of a pipe (then ``Ran.stdout`` is
    empty)."""
    with start_process(args, cwd=cwd, env=env, stdin=subprocess.PIPE if input is not None else None,
                       stdout=stdout, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    out = out or ""
    return Ran(proc.returncode, out, err, out + err)
