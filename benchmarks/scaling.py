"""How HVP time and peak memory grow with the data: 1×, 4×, 16× the samples, per strategy.

    python benchmarks/scaling.py [--models mlp cnn_bn] [--device cpu|cuda] [--scales 1 4 16]

Each point runs in a fresh process, so its peak is its own. Memory is what the engine adds
beyond the model and the data: on the CPU the peak resident set minus the resident set once
the data is loaded; on CUDA the peak allocated device memory (the data stays in host memory,
one batch at a time goes to the device). ``cached`` keeps the first-order graph of the whole
dataset, so it grows with the data by design; ``stream`` should stay flat.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from cases import CASES, build

from landscape_cli.data_batches import first_tensor
from landscape_cli.engine.hvp import HVPEngine


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def child(model: str, strategy: str, scale: int, device: str, repeats: int) -> dict:
    torch.set_num_threads(2)
    case = build(model, device, scale=scale)
    problem = case.problem
    data_mb = sum(first_tensor(b).nbytes + b[1].nbytes for b in problem.batches) / 2**20
    cuda = problem.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    start = time.perf_counter()
    engine = HVPEngine(problem, strategy=strategy)
    sync()
    setup = time.perf_counter() - start
    v = torch.randn(problem.n, device=problem.device)
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        engine.hvp(v)
        sync()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"model": model, "strategy": engine.mode, "scale": scale, "samples": problem.n_samples,
            "data_mb": data_mb, "setup_s": setup, "hvp_ms": 1e3 * statistics.median(times[1:]),
            "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn_bn"], choices=CASES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--strategies", nargs="+", default=["cached", "stream"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "STRATEGY", "SCALE"))
    args = parser.parse_args()
    if args.child:
        model, strategy, scale = args.child
        print(json.dumps(child(model, strategy, int(scale), args.device, args.repeats)))
        return
    print(f"device {args.device}, torch {torch.__version__}; engine memory = "
          + ("peak allocated CUDA memory" if args.device.startswith("cuda")
             else "peak RSS minus RSS with the data loaded") + "\n")
    print("| model | strategy | data × | samples | data MB | engine setup s | HVP ms | HVP ÷ 1× "
          "| engine memory MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for strategy in args.strategies:
            first = None
            for scale in args.scales:
                out = subprocess.run([sys.executable, __file__, "--device", args.device, "--repeats",
                                      str(args.repeats), "--child", model, strategy, str(scale)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"| {model} | {strategy} | {scale} | failed: {out.stderr.strip()[-120:]} |")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                first = first or row
                print(f"| {model} | {row['strategy']} | {scale} | {row['samples']} | {row['data_mb']:.1f} "
                      f"| {row['setup_s']:.2f} | {row['hvp_ms']:.1f} | {row['hvp_ms'] / first['hvp_ms']:.2f} "
                      f"| {row['peak_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
