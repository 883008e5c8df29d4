"""Trace estimators against exact traces: chosen spectra and the real MLP's dense Hessian."""

from __future__ import annotations

import statistics

import pytest
import torch
from helpers.quadratic import save_quadratic_checkpoint, symmetric_with_spectrum, write_quadratic_config
from helpers.samples import MLP_CKPT

from landscape_cli.analyses.trace import module_groups, trace
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.linalg.operator import DenseOperator
from landscape_cli.linalg.trace import hutchinson, hutchpp, independent_columns, t975

MIXED = [3.0 * (1 + i % 7) for i in range(60)] + [-1.5 * (1 + i % 5) for i in range(40)]
DECAYING = [100 * 0.85 ** i for i in range(300)]


def operator(eigenvalues, seed=0):
    matrix = symmetric_with_spectrum(eigenvalues, seed=seed)
    return DenseOperator(matrix), float(sum(eigenvalues))


@pytest.mark.parametrize("method", ["hutchpp", "hutchinson"])
def test_quadratic_with_mixed_signs_within_interval_and_3_percent(cli, tmp_path, method):
    exact = sum(MIXED)
    config = write_quadratic_config(tmp_path, MIXED, seed=1)
    ckpt = save_quadratic_checkpoint(tmp_path, MIXED, seed=1)
    code, doc, _ = cli("trace", ckpt, "-c", config, "--method", method, "--rtol", "0.01",
                       "--max-hvps", "3000", "--json")
    assert code == 0
    results = doc["results"]
    lo, hi = results["ci95"]
    assert lo <= exact <= hi
    assert abs(results["trace"] - exact) <= 0.03 * abs(exact)
    assert results["converged"] and results["stderr"] <= 0.01 * abs(results["trace"])
    assert results["trace_per_param"] == pytest.approx(results["trace"] / len(MIXED))
    assert results["method"] == method and doc["cost"]["hvps"] == results["hvps"]


@pytest.mark.parametrize("method", ["hutchpp", "hutchinson"])
def test_real_mlp_within_interval_and_3_percent(mlp_exact, method):
    problem, hessian, _ = mlp_exact
    exact = float(torch.trace(hessian))
    result = trace(HVPEngine(problem), method=method, rtol=0.01, max_hvps=4000,
                   seed=0)
    lo, hi = result.estimate.ci95
    assert lo <= exact <= hi
    assert abs(result.estimate.trace - exact) <= 0.03 * abs(exact)
    assert result.estimate.converged


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum_at_equal_hvps():
    matrix, exact = operator(DECAYING)
    errors = {"hutchpp": [], "hutchinson": []}
    for seed in range(20):
        for name, estimator in (("hutchpp", hutchpp), ("hutchinson", hutchinson)):
            est = estimator(matrix, rtol=0, max_matvecs=60, generator=torch.Generator().manual_seed(seed))
            assert est.matvecs == 60
            errors[name].append(abs(est.trace - exact) / exact)
    # Hutch++ removes the top directions: a far smaller error for the same 60 HVPs
    assert statistics.mean(errors["hutchpp"]) < 0.3 * statistics.mean(errors["hutchinson"])


@pytest.mark.parametrize("estimator", [hutchpp, hutchinson])
def test_the_95_percent_interval_covers_the_truth_about_95_percent_of_the_time(estimator):
    matrix, exact = operator(MIXED, seed=2)
    covered = 0
    for seed in range(60):
        est = estimator(matrix, rtol=0.05, max_matvecs=400,
                        generator=torch.Generator().manual_seed(seed))
        covered += est.ci95[0] <= exact <= est.ci95[1]
    assert covered >= 51  # ≥ 85% of 60: a broken error bar fails this, an honest one passes


def test_sketch_spanning_the_space_is_exact():
    matrix, exact = operator([5.0, -2.0, 1.0, 0.5])
    est = hutchpp(matrix, rtol=0.01, max_matvecs=100, sketch=4,
                  generator=torch.Generator().manual_seed(0))
    assert est.trace == pytest.approx(exact, abs=1e-12) and est.stderr == 0 and est.converged


def test_sketch_directions_kept_do_not_depend_on_n():
    # the old rule |rᵢᵢ| > n·ε·max dropped every direction in float32 once n ≥ 2²³ (ResNet-18)
    r = torch.diag(torch.tensor([3.0, 0.03, 3e-7]))
    assert independent_columns(r, torch.float32).tolist() == [True, True, False]
    assert independent_columns(r.double(), torch.float64).tolist() == [True, True, True]


def test_per_layer_traces_are_the_diagonal_blocks(mlp_exact):
    problem, hessian, _ = mlp_exact
    groups = module_groups(problem.names, problem.groups)
    assert list(groups) == ["0", "2"]  # Linear layers 0 and 2 of the Sequential, weight + bias
    result = trace(HVPEngine(problem), rtol=0.01, max_hvps=3000, seed=0,
                   groups=groups)
    for row in result.per_layer:
        index = torch.cat([torch.arange(s.start, s.stop) for s in groups[row.name]])
        exact = float(hessian[index][:, index].trace())
        assert row.ci95[0] <= exact <= row.ci95[1]
        assert abs(row.trace - exact) <= 0.03 * abs(exact)
        assert row.n_params == len(index)


def test_per_layer_from_the_cli(cli):
    code, doc, _ = cli("trace", MLP_CKPT, "--set", "data.max_samples=200", "--per-layer",
                       "--rtol", "0.05", "--json")
    assert code == 0
    rows = doc["results"]["per_layer"]
    assert [r["name"] for r in rows] == ["0", "2"] and sum(r["n_params"] for r in rows) == 2410
    total = doc["results"]["trace"]
    assert sum(r["trace"] for r in rows) == pytest.approx(total, rel=0.15)


@pytest.mark.parametrize("rtol", ["0", "-0.1"])
def test_non_positive_rtol_is_bad_input(cli, rtol):
    code, _, result = cli("trace", MLP_CKPT, "--rtol", rtol, "--set", "data.max_samples=50")
    assert code == 2
    assert "--rtol" in result.output and "Traceback" not in result.output


def test_student_t_quantiles():
    assert t975(1) == pytest.approx(12.706)
    assert t975(10) == pytest.approx(2.228)
    assert t975(60) == pytest.approx(2.000, abs=2e-3)
    assert t975(1000) == pytest.approx(1.962, abs=2e-3)


def test_no_parameter_selected_exits_2(cli):
    code, _, result = cli("trace", MLP_CKPT, "--params", "nothing.*", "--set", "data.max_samples=50")
    assert code == 2
    assert "no parameter selected" in result.output and "0.weight" in result.output


def test_non_finite_hvp_exits_2(cli, tmp_path):
    from helpers.quadratic import QUADRATIC_FILE, make_kink

    here = QUADRATIC_FILE
    config = tmp_path / "kink.yaml"
    config.write_text(f"model: {{factory: '{here}:make_kink'}}\n"
                      f"data: {{factory: '{here}:make_data', batch_size: 4}}\n"
                      f"loss: {{fn: '{here}:quadratic_loss'}}\ndtype: float64\ndevice: cpu\n")
    ckpt = tmp_path / "kink.pt"
    torch.save(make_kink().state_dict(), ckpt)
    code, _, result = cli("trace", ckpt, "-c", config)
    assert code == 2
    assert "Hessian-vector product is not finite" in result.output
    assert "Traceback" not in result.output
