"""``sharpness``'s default suite against ``spectrum --top 1`` + ``trace`` (issue 19's target:
under 3×), on a sample checkpoint, in-process through the Python API: the analysis wall time
(``cost.wall_s``, loading excluded), median of N runs, and what the suite spent.

    python benchmarks/sharpness.py [--checkpoint sample_checkpoints/cnn_bn/final.pt] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import landscape_cli

ROOT = Path(__file__).resolve().parent.parent


def wall(command: str, checkpoint: Path, **options) -> tuple[float, dict]:
    report = landscape_cli.analyze(command, checkpoint, **options)
    return report.cost["wall_s"], report.cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "sample_checkpoints/cnn_bn/final.pt")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--alone", nargs="*", default=["pac_bayes_sigma"],
                        help="measures also timed alone (with the trace, which they may start from)")
    args = parser.parse_args()
    suite, spectrum, trace = [], [], []
    alone: dict[str, list[float]] = {name: [] for name in args.alone}
    for _ in range(args.runs):
        seconds, cost = wall("sharpness", args.checkpoint)
        suite.append(seconds)
        for name in args.alone:
            alone[name].append(wall("sharpness", args.checkpoint,
                                    measures=f"trace_per_param,{name}")[0])
        spectrum.append(wall("spectrum", args.checkpoint, top=1)[0])
        trace.append(wall("trace", args.checkpoint)[0])
    base = statistics.median(spectrum) + statistics.median(trace)
    print(f"sharpness (default suite): {statistics.median(suite):.2f} s  {cost}")
    print(f"spectrum --top 1: {statistics.median(spectrum):.2f} s, trace: {statistics.median(trace):.2f} s")
    print(f"ratio: {statistics.median(suite) / base:.2f}× (target < 3×)")
    for name, times in alone.items():
        print(f"{name} with trace_per_param: {statistics.median(times):.2f} s "
              f"({statistics.median(times) - statistics.median(trace):.2f} s beyond the trace)")


if __name__ == "__main__":
    main()
