"""Same seed, same numbers (README, issue 16): no choice the engine makes may depend on the clock
or on what else the machine runs.

Batched and looped products round differently (6e-9 relative on a trace, 1.4e-5 on a density's
negative weight ratio), so an engine that picked its way by timing gave other digits whenever
the machine was busier. The unit test drives the engine under two fake clocks that make each
way look slow in turn: before the fix, that flipped the engine's choices and the products; now
neither changes. The CLI test runs each command three times in real processes, once beside a
busy process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from helpers.samples import CNN_CKPT, MLP_CKPT, ROOT, loaded

import landscape_cli.engine.plan as plan_module
from landscape_cli.engine.hvp import HVPEngine

HOUR = 3600.0


class SlowClock:
    """``time.perf_counter`` as it would read if every product one way took an hour: backward
    passes with ``is_grads_batched`` and vmapped calls when ``batched_is_slow``, other backward
    passes (one row at a time, double backward) otherwise. The way the engine takes must not
    care."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, batched_is_slow: bool) -> None:
        self.now = 0.0
        self.batched_is_slow = batched_is_slow
        grad, vmap = torch.autograd.grad, torch.func.vmap

        def timed_grad(*args, **kwargs):
            self._spend(kwargs.get("is_grads_batched", False))
            return grad(*args, **kwargs)

        def timed_vmap(fn, *args, **kwargs):
            mapped = vmap(fn, *args, **kwargs)
            return lambda *a, **k: self._spend(True) or mapped(*a, **k)

        monkeypatch.setattr(torch.autograd, "grad", timed_grad)
        monkeypatch.setattr(torch.func, "vmap", timed_vmap)
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)

    def _spend(self, batched: bool) -> None:
        if batched == self.batched_is_slow:
            self.now += HOUR


def products(problem, strategy: str) -> tuple[list[torch.Tensor], dict]:
    """One vector, then three blocks of four (the second is where a timed engine chose), then
    one vector again: the products and the engine's report."""
    engine = HVPEngine(problem, strategy=strategy)
    generator = torch.Generator().manual_seed(0)
    blocks = [torch.randn(rows, problem.n, generator=generator) for rows in (1, 4, 4, 4, 1)]
    return [engine.hvp(block) for block in blocks], engine.describe()


@pytest.mark.parametrize("strategy", ["cached", "stream"])
def test_products_do_not_depend_on_which_way_looks_faster(monkeypatch, strategy):
    # 800 digits in float32: batched and looped differ by 3e-7 (300 digits: not at all)
    problem = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=800", "dtype=float32").problem
    runs = []
    for batched_is_slow in (True, False):
        with monkeypatch.context() as patch:
            SlowClock(patch, batched_is_slow)
            runs.append(products(problem, strategy))
    (first, first_report), (second, second_report) = runs
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first_report == second_report
    if strategy == "cached":  # 800 digits save 0.5 MB: far from BATCHED_BYTES, so batched
        assert first_report["cached_block_hvp"] == "batched"
    else:  # the CPU's rules: double backward alone, vmapped over a small group's blocks
        assert first_report["single_vector_hvp"] == "double backward"
        assert first_report["stream_block_hvp"] == "vmapped forward-over-reverse"


def test_the_default_budget_is_a_share_of_the_memory_the_machine_has():
    """Not of what is free: the budget picks cached or stream, the group sizes and whether SLQ
    keeps its bases, all of which change the last digits."""
    with open("/proc/meminfo") as handle:
        total_kb = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    assert plan_module.default_memory_budget(torch.device("cpu")) == int(0.4 * total_kb * 1024)


def test_a_kept_graph_out_of_gpu_memory_streams_with_a_warning(monkeypatch, mlp_exact):
    """The default GPU budget is half the GPU, whatever other processes hold: where the graph
    does not fit after all, ``auto`` streams (exact still) and says so."""
    problem, hessian, _ = mlp_exact

    def no_memory(self, groups, budget):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(HVPEngine, "_first_order_graph", no_memory)
    engine = HVPEngine(problem)
    assert engine.mode == "stream" and any("ran out of GPU memory" in w for w in engine.warnings)
    vectors = torch.randn(3, problem.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scale = float(hessian.abs().max()) * problem.n ** 0.5
    assert float((engine.hvp(vectors) - vectors @ hessian).abs().max()) < 1e-10 * scale


MLP_DATA = ("--set", "data.max_samples=800")  # where batched and looped round apart
COMMANDS = {  # a few HVPs each, in blocks where the command has them: most of a run is starting up
    "spectrum top 3": ("spectrum", MLP_CKPT, *MLP_DATA, "--top", "3", "--max-hvps", "20"),
    "spectrum density": ("spectrum", MLP_CKPT, *MLP_DATA, "--density", "--runs", "3", "--steps", "10",
                         "--max-hvps", "8"),
    "trace": ("trace", MLP_CKPT, *MLP_DATA, "--max-hvps", "24"),
    "classify-critical-point": ("classify-critical-point", MLP_CKPT, *MLP_DATA, "--max-hvps", "12",
                                "--runs", "3", "--steps", "10"),
    "cnn_bn trace": ("trace", CNN_CKPT, "--set", "data.max_samples=300", "--max-hvps", "12"),
}


def run_cli(args: tuple) -> dict:
    """``python -m landscape_cli ARGS --json`` in a fresh process; its parsed report."""
    proc = subprocess.run([sys.executable, "-m", "landscape_cli", *map(str, args), "--json", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def under_load(args: tuple) -> dict:
    """``run_cli`` with a process spinning on a core beside it, as another user's job would."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return run_cli(args)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_same_seed_gives_the_same_numbers_in_three_processes(command):
    args = COMMANDS[command]
    reports = [run_cli(args), run_cli(args), under_load(args)]
    results = {json.dumps(report["results"], sort_keys=True) for report in reports}
    assert len(results) == 1
    # the engine's choices, budget included, are the same whatever the load
    assert len({json.dumps(report["settings"], sort_keys=True) for report in reports}) == 1
