"""Where the time of an HVP goes: torch.profiler over one gradient and H·V blocks of k = 1, 8.

    python benchmarks/profile_hvp.py [--model resnet18] [--device cuda] [--strategy stream]

Prints, per run, the operators with the most self time (CUDA time on a GPU) as a
Markdown table, and the share of the total they take.
"""

from __future__ import annotations

import argparse

import torch
from cases import CASES, build
from torch.profiler import ProfilerActivity, profile

from landscape_cli.engine.hvp import HVPEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=CASES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    case = build(args.model, args.device)
    engine = HVPEngine(case.problem, strategy=args.strategy)
    cuda = case.problem.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"{args.model}: {case.problem.n} parameters, {case.problem.n_samples} samples, "
          f"engine mode {engine.mode}, device {case.problem.device}\n")
    blocks = {k: torch.randn(k, case.problem.n, device=case.problem.device) for k in (1, 8)}

    def gradient():  # a fresh engine each time: an engine keeps its ∇L
        return HVPEngine(case.problem, strategy="stream").grad()

    runs = {"one gradient (the unit)": gradient,
            **{f"H·V, k = {k}": lambda b=b: engine.hvp(b) for k, b in blocks.items()}}
    for label, run in runs.items():
        for _ in range(2):  # warm-up: the first block builds the kept graph (cached mode),
            run()           # the second times batched against looped backward passes
        with profile(activities=activities) as prof:
            run()
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        total = sum(getattr(e, key) for e in events)
        print(f"{label}: total self time {total / 1e3:.1f} ms\n")
        print("| operator | calls | self time ms | share |\n|---|---:|---:|---:|")
        for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[: args.rows]:
            print(f"| `{e.key}` | {e.count} | {getattr(e, key) / 1e3:.1f} | "
                  f"{getattr(e, key) / total:.1%} |")
        print()


if __name__ == "__main__":
    main()
