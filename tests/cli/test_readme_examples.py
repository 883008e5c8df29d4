"""Every console example of the README runs as printed (issue 17.6): each ``$ command`` is
executed by bash in a folder that has the samples, and its output must have the shape the
README shows: the same lines (the same words, wherever a line wrapped), with every number, bar
and rule width free (timings and the last digits differ between machines), ``...`` standing
for lines left out, and the same exit code where the README shows one (``echo $?``). They run
at a terminal of a fixed size (``COLUMNS``), the one the README's examples were printed at,
not at the caller's."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers.samples import MLP_CKPT as MLP
from helpers.samples import ROOT

README = ROOT / "README.md"
NUMBER = re.compile(r"[-+−]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?%?")
BARS = re.compile(r"[█▏▎▍▌▋▊▉▓▒░▁▂▃▄▅▆▇]+")
RULES = re.compile(r"([━─])\1+")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The terminal the README's examples are printed at, whoever runs the tests: wide enough that
#: no table of the README truncates a header, whatever digits a machine gives.
COLUMNS, LINES = 120, 40
#: What Rich and ``shutil.get_terminal_size`` read of the environment: set here, never inherited.
TERMINAL = {"COLUMNS": str(COLUMNS), "LINES": str(LINES), "TERM": "xterm", "NO_COLOR": "1"}
INHERITED_NOT = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS",
                 "JUPYTER_LINES", "COLORTERM", "LANDSCAPE_CONFIG")


@dataclass
class Block:
    """One console block: its ``$ commands`` and the lines the README shows after each."""

    line: int
    commands: list[str] = field(default_factory=list)
    shown: list[list[str]] = field(default_factory=list)


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() == "```console"
            if inside:
                found.append(Block(number + 1))
        elif inside and line.startswith("$ "):
            found[-1].commands.append(line[2:])
            found[-1].shown.append([])
        elif inside and found[-1].commands:
            found[-1].shown[-1].append(line)
    return found


#: Printed between two commands of a block; the exit code survives it for ``echo $?``.
MARK = "@@@ next command @@@"


def script(block: Block) -> str:
    """The block's commands in one bash session; each one's stderr is shown after its stdout,
    and its exit code survives the mark for a following ``echo $?``."""
    return "\n".join(f"{{ {command} ; }} 2>.stderr; rc=$?; cat .stderr; echo '{MARK}'; (exit $rc)"
                     for command in block.commands)


def at_a_terminal(command: list[str], **kwargs) -> str:
    """Run with stdout on a pseudo-terminal of ``COLUMNS`` × ``LINES``, as the README's reader
    does (tables, not JSON), and return what it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.STDOUT, **kwargs)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    proc.wait(timeout=600)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def skeleton(line: str) -> str:
    """A line with what varies between runs and machines made equal."""
    line = BARS.sub("▮", NUMBER.sub("#", ANSI.sub("", line)))
    return " ".join(RULES.sub(r"\1", line).split())


def words(lines: list[str]) -> list[str]:
    return [word for line in lines for word in skeleton(line).split()]


def matches(shown: list[str], got: list[str]) -> bool:
    """``got`` has the shape of ``shown``: the same words in the same order, wherever the
    terminal wrapped a line (a number's digits move a wrap, and differ between machines); a
    ``...`` line in ``shown`` matches any lines."""
    if not shown:
        return not got
    if shown[0].strip() == "...":
        return any(matches(shown[1:], got[i:]) for i in range(len(got) + 1))
    end = next((i for i, line in enumerate(shown) if line.strip() == "..."), len(shown))
    wanted = words(shown[:end])
    for n in range(1, len(got) + 1):  # the lines of got that print the lines before the `...`
        found = words(got[:n])
        if found == wanted and matches(shown[end:], got[n:]):
            return True
        if len(found) > len(wanted):
            return False
    return False


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The samples under their README paths, and the README's ``suspicious.pt``."""
    work = tmp_path_factory.mktemp("readme")
    (work / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": torch.load(MLP, weights_only=True), "x": Payload()},
               work / "suspicious.pt")
    (work / "landscape.yaml").write_text(f"extends: {ROOT / 'configs' / 'mlp.yaml'}\n")
    return work


ALL = blocks(README.read_text())


def test_the_readme_has_examples():
    assert len(ALL) >= 8 and any("jq" in c for b in ALL for c in b.commands)
    assert all(b.commands for b in ALL)


@pytest.mark.slow
@pytest.mark.parametrize("block", ALL, ids=[f"line{b.line}" for b in ALL])
def test_readme_example_runs_as_printed(block, workdir):
    if any("| jq" in c for c in block.commands) and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    env = {**{k: v for k, v in os.environ.items() if k not in INHERITED_NOT}, **TERMINAL,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    printed = at_a_terminal(["bash", "-c", script(block)], cwd=workdir, env=env)
    outputs = printed.split(MARK + "\n")[:-1]
    assert len(outputs) == len(block.commands), printed
    for command, shown, got in zip(block.commands, block.shown, outputs):
        # a note of how long the run will take comes with a slow machine, as timings differ
        lines = [g for g in got.splitlines()
                 if g.strip() and not (g.startswith("note: ") and not any("note: " in s for s in shown))]
        assert matches([s for s in shown if s.strip()], lines), (
            f"README line {block.line}: `{command}` printed\n" + "\n".join(lines))
