"""Start-up time of the CLI (issue 18.5): wall seconds of ``landscape --help``,
``landscape spectrum --help``, ``landscape --version`` and ``landscape schema``, median of N
runs, each a fresh process. ``--source DIR`` times another checkout (e.g. an older commit in
a ``git worktree``) with the same interpreter.

    python benchmarks/startup.py [--runs 7] [--source DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["spectrum", "--help"], ["--version"], ["schema"])


def wall(args: list[str], source: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "landscape_cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=source)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    for command in COMMANDS:
        times = [wall(command, args.source) for _ in range(args.runs)]
        print(f"| `landscape {' '.join(command)}` | {statistics.median(times):.2f} s |")


if __name__ == "__main__":
    main()
