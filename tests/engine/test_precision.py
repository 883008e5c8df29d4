"""Issue 27, section 2: mixed precision as users train (``precision: 32 | 64 | bf16-mixed |
16-mixed``, Lightning's names), and the peak memory of every run (``cost.peak_memory_bytes``).

Mixed precision keeps float32 weights and runs every pass under autocast; the float64 reference
products (``HVPEngine.exact``) run without it, so the residual floor measures what the precision
costs, and a mixed run's eigenvalues stay within their reported errors of the exact ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runners import invoke, run_process
from helpers.samples import CONFIGS, DIGITS, MLP_CKPT, ROOT
from torch import nn

import landscape_cli
from landscape_cli.config import validate
from landscape_cli.engine import peak_memory
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.passes import Passes
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.errors import LandscapeError
from landscape_cli.loading.data import Batches

MIXED = ("bf16-mixed", "16-mixed")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def spectrum(**options) -> landscape_cli.Report:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return landscape_cli.analyze("spectrum", MLP_CKPT, top=2, **options)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs() -> dict[str, landscape_cli.Report]:
    """The sample MLP's top-2 spectrum in each precision (float64 to a tight tolerance: the
    exact eigenvalues)."""
    return {"32": spectrum(), "64": spectrum(precision="64", tol=1e-9),
            **{name: spectrum(precision=name) for name in MIXED}}


# ----------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize("name", MIXED)
def test_a_mixed_run_is_within_its_reported_error_of_the_exact_and_float32_eigenvalues(runs, name):
    mixed, single, exact = runs[name].results, runs["32"].results, runs["64"].results
    assert runs[name].settings["precision"] == name and runs[name].settings["dtype"] == "float32"
    for i in range(2):
        value, error = mixed["top_eigenvalues"][i], mixed["top_residuals"][i]
        assert abs(value - exact["top_eigenvalues"][i]) <= error + exact["top_residuals"][i]
        assert abs(value - single["top_eigenvalues"][i]) <= error + single["top_residuals"][i]
    # autocast ran: the eigenvalues moved by far more than float32's own error
    assert abs(mixed["top_eigenvalues"][0] - single["top_eigenvalues"][0]) \
        > 100 * single["top_residuals"][0]


@pytest.mark.parametrize("name", MIXED)
def test_the_residual_floor_shows_what_the_precision_costs(runs, name):
    """bf16 rounds at 2⁻⁸, fp16 at 2⁻¹¹, float32 at 2⁻²⁴: the distance of the products to
    float64 ones grows by orders of magnitude."""
    floor32 = runs["32"].results["residual_floor"]
    assert 0 < floor32 < 1e-5
    assert runs[name].results["residual_floor"] > 100 * floor32


def test_bf16_costs_more_than_fp16(runs):
    """bf16 keeps float32's range but 8 bits of mantissa; fp16 has 11."""
    assert runs["bf16-mixed"].results["residual_floor"] > runs["16-mixed"].results["residual_floor"]


def test_precision_64_is_dtype_float64_byte_for_byte(tmp_path):
    """``--precision 64``, a config with ``precision: 64`` and no dtype, and ``--dtype float64``
    are the same run: the same results and settings (the flag's, config digest included; the
    other config file lies elsewhere, so its python_path and digest differ)."""
    text = (CONFIGS / "mlp.yaml").read_text()
    config = tmp_path / "landscape.yaml"
    config.write_text(text.replace("../sample_checkpoints", str(ROOT / "sample_checkpoints"))
                      .replace("dtype: float32", "precision: 64"))
    by_dtype = spectrum(dtype="float64").to_dict()
    by_flag, by_file = spectrum(precision="64").to_dict(), spectrum(config=config).to_dict()
    for other in (by_flag, by_file):
        assert json.dumps(other["results"]) == json.dumps(by_dtype["results"])
        for key in ("dtype", "precision", "n_samples", "hvp_strategy"):
            assert other["settings"].get(key) == by_dtype["settings"].get(key), key
    assert by_flag["settings"]["config_sha256"] == by_dtype["settings"]["config_sha256"]
    assert by_dtype["settings"]["precision"] == "64"


# ----------------------------------------------------------------------------- every pass


class Recording(nn.Module):
    """A tanh MLP that notes the dtype its first layer computed in, call by call."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(64, 16), nn.Linear(16, 10)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        hidden = self.first(x)
        if not isinstance(hidden, torch.fx.Proxy):  # torch.fx traces the forward once (passes)
            self.dtypes.append(hidden.dtype)
        return self.second(torch.tanh(hidden))


def test_every_pass_and_every_way_to_a_product_runs_under_autocast_but_the_reference():
    x, y = torch.from_numpy(DIGITS["x"][:60]), torch.from_numpy(DIGITS["y"][:60]).long()
    model = Recording()
    batches = Batches([(x[:30], y[:30]), (x[30:], y[30:])], [30, 30])
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), batches,
                            device=torch.device("cpu"), dtype=torch.float32, precision="bf16-mixed")
    passes = Passes(problem)
    engine = HVPEngine(problem, strategy="stream", passes=passes)
    block = torch.randn(3, problem.n, generator=torch.Generator().manual_seed(0))
    batch = problem.batch(0)
    ways = {
        "evaluate": lambda: passes.evaluate(),
        "value_and_grad": lambda: passes.value_and_grad(),
        "evaluate_many": lambda: passes.evaluate_many(problem.theta0.repeat(2, 1)),
        "the kept graph": lambda: HVPEngine(problem, strategy="cached", passes=passes).hvp(block),
        "forward-over-reverse": lambda: engine._forward_over_reverse(problem.theta0, block, batch),
        "double backward": lambda: engine._double_backward(problem.theta0, block, batch),
    }
    for name, way in ways.items():
        model.dtypes.clear()
        way()
        assert model.dtypes and set(model.dtypes) == {torch.bfloat16}, name
    model.dtypes.clear()
    exact = engine.exact()
    exact.hvp(block)
    assert exact.problem.objective.model.dtypes and set(exact.problem.objective.model.dtypes) \
        == {torch.float64}
    assert problem.theta0.dtype == torch.float32  # the master weights stay float32


def test_a_plain_precision_runs_without_autocast():
    x, y = torch.from_numpy(DIGITS["x"][:30]), torch.from_numpy(DIGITS["y"][:30]).long()
    model = Recording()
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), Batches([(x, y)], [30]),
                            device=torch.device("cpu"), dtype=torch.float32)
    Passes(problem).value_and_grad()
    assert set(model.dtypes) == {torch.float32}


# ----------------------------------------------------------------------------- the config


def _config(**keys) -> dict:
    return {"model": {"factory": "m:f"}, "data": {"path": "d.npz"}, **keys}


@pytest.mark.parametrize(("keys", "dtype", "precision"), [
    ({}, "float32", "32"),
    ({"dtype": "float64"}, "float64", "64"),
    ({"precision": 64}, "float64", "64"),  # YAML reads 64 as an integer
    ({"precision": "32"}, "float32", "32"),
    ({"precision": "bf16-mixed"}, "float32", "bf16-mixed"),
    ({"precision": "16-mixed", "dtype": "float32"}, "float32", "16-mixed"),
])
def test_dtype_and_precision_follow_each_other(keys, dtype, precision):
    config = validate(_config(**keys), "c.yaml")
    assert (config.dtype, config.precision) == (dtype, precision)


@pytest.mark.parametrize(("dtype", "precision"), [("float32", 64), ("float64", "32"),
                                                  ("float64", "bf16-mixed"), ("float64", "16-mixed")])
def test_a_contradiction_in_the_config_is_one_line_naming_the_key(dtype, precision):
    with pytest.raises(LandscapeError) as error:
        validate(_config(dtype=dtype, precision=precision), "c.yaml")
    message = str(error.value)
    assert message.startswith("c.yaml: precision: ") and "\n" not in message
    assert f"dtype is {dtype}" in message


def test_plain_precisions_keep_the_config_digest_and_mixed_ones_change_it():
    plain = validate(_config(), "c.yaml").sha256()
    assert validate(_config(precision=32), "c.yaml").sha256() == plain
    assert validate(_config(precision="bf16-mixed"), "c.yaml").sha256() != plain
    assert validate(_config(precision=64), "c.yaml").sha256() == validate(
        _config(dtype="float64"), "c.yaml").sha256()


def test_contradicting_flags_are_one_line_and_exit_2():
    ran = invoke(["spectrum", MLP_CKPT, "--dtype", "float32", "--precision", "64", "--json"])
    assert ran.returncode == 2, ran.detail()
    assert ran.stdout == ""
    (line,) = ran.stderr.strip().splitlines()
    assert "--precision 64" in line and "dtype is float32" in line


def test_the_precision_flag_sets_the_dtype_over_the_config_s():
    """The sample config says ``dtype: float32``; ``--precision 64`` stands for both keys, as a
    flag wins over the file."""
    ran = invoke(["spectrum", MLP_CKPT, "--precision", "64", "--top", "1", "--set",
                  "data.max_samples=100", "--json"])
    assert ran.returncode == 0, ran.detail()
    settings = ran.json()["settings"]
    assert (settings["dtype"], settings["precision"]) == ("float64", "64")


def test_an_unknown_precision_names_the_flag():
    ran = invoke(["spectrum", MLP_CKPT, "--precision", "bf16", "--json"])
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert "--precision bf16" in line and "bf16-mixed" in line


# ----------------------------------------------------------------------------- peak memory


def test_every_report_has_its_peak_memory(runs):
    for report in runs.values():
        peak = report.cost["peak_memory_bytes"]
        params = report.checkpoint["n_params"] * (8 if report.settings["dtype"] == "float64" else 4)
        assert isinstance(peak, int) and peak >= params
        assert "peak_memory_bytes_max_over_ranks" not in report.cost  # one process


def test_a_batch_line_has_its_peak_memory(tmp_path):
    out = tmp_path / "lines.jsonl"
    ran = invoke(["batch", MLP_CKPT, "--command", "spectrum", "--top", "1", "--set",
                  "data.max_samples=100", "--precision", "bf16-mixed", "-o", out, "-q"])
    assert ran.returncode == 0, ran.detail()
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert isinstance(line["cost"]["peak_memory_bytes"], int) and line["cost"]["peak_memory_bytes"] > 0
    assert line["settings"]["precision"] == "bf16-mixed"


def test_on_cuda_the_peak_is_the_allocator_s_since_the_run_started(monkeypatch):
    """No GPU here: the CUDA calls are recorded, to check which device they name and that an
    uninitialized CUDA is left so."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", d)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: calls.append(("max", d)) or 1234)
    device = torch.device("cuda", 1)
    peak_memory.start(device)
    assert peak_memory.peak_bytes(device) == 1234
    assert calls == [("reset", device), ("max", device)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    peak_memory.start(device)
    assert len(calls) == 2
    peak_memory.start(torch.device("cpu"))
    assert len(calls) == 2


def _digits_file(path: Path, rows: int) -> Path:
    index = np.arange(rows) % len(DIGITS["y"])
    np.savez(path, x=DIGITS["x"][index], y=DIGITS["y"][index])
    return path


@pytest.mark.slow
def test_a_run_on_32_times_the_data_reports_more_memory(tmp_path):
    """Each run in its own process: the maximum RSS of a process cannot be reset, so two runs in
    one would compare the first with itself. 320,000 digits hold ~80 MB more than 10,000, and
    their kept graph ~150 MB more again: far above what two runs of one size differ by, even on
    a machine short of memory, where the kernel drops a process's clean library pages from its
    RSS (at 8×, such a machine once measured less than 10 MiB between them)."""
    peaks = []
    for rows in (10_000, 320_000):
        data = _digits_file(tmp_path / f"digits{rows}.npz", rows)
        ran = run_process(["spectrum", MLP_CKPT, "--top", "1", "--max-hvps", "3", "--set",
                           f"data.path={data}", "--json"], env={"OMP_NUM_THREADS": "1"})
        assert ran.returncode == 0, ran.detail()
        peaks.append(ran.json()["cost"]["peak_memory_bytes"])
    assert peaks[1] >= peaks[0] + (64 << 20), peaks


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(),
                    reason="torchrun and torch.distributed (gloo) are needed")
def test_under_torchrun_rank_0_reports_its_peak_and_the_largest_of_all_ranks(tmp_path):
    out = tmp_path / "spectrum.json"
    ran = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "-m", "landscape_cli", "spectrum",
                          str(MLP_CKPT), "--top", "1", "--set", "data.max_samples=300",
                          "--precision", "bf16-mixed", "-o", str(out), "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    doc = json.loads(out.read_text())
    cost = doc["cost"]
    assert doc["settings"]["world_size"] == 2 and doc["settings"]["precision"] == "bf16-mixed"
    assert isinstance(cost["peak_memory_bytes_max_over_ranks"], int)
    assert cost["peak_memory_bytes_max_over_ranks"] >= cost["peak_memory_bytes"] > 0


def test_the_run_records_its_precision_even_when_left_out(runs):
    assert runs["32"].settings["precision"] == "32"
