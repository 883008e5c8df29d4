"""`landscape spectrum` end to end: quadratics with a chosen spectrum and a real MLP."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from helpers.exact import dense_hessian, relative_error
from helpers.quadratic import save_quadratic_checkpoint, symmetric_with_spectrum, write_quadratic_config
from helpers.samples import MLP_CKPT

SPECTRA = [
    # mixed signs with well separated ends
    [-7.0, -5.0, -4.0, -3.5, -3.0] + [0.1 * i for i in range(-10, 30)] + [4.0, 5.5, 6.0, 8.0, 11.0],
    # a maximum: negative definite
    [-(1.5 ** i) for i in range(40)],
]


@pytest.mark.parametrize("eigenvalues", SPECTRA, ids=["mixed", "negative"])
def test_quadratic_top5_bottom5_equal_eigvalsh(cli, tmp_path, eigenvalues):
    config = write_quadratic_config(tmp_path, eigenvalues, seed=3)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=3)
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "5", "--bottom", "5",
                       "--tol", "1e-10", "--json")
    assert code == 0
    exact = torch.linalg.eigvalsh(symmetric_with_spectrum(eigenvalues, seed=3))
    results = doc["results"]
    assert relative_error(results["top_eigenvalues"], exact[-5:].flip(0)) < 1e-6
    assert relative_error(results["bottom_eigenvalues"], exact[:5]) < 1e-6
    assert all(results["top_converged"]) and all(results["bottom_converged"])
    assert all(r < 1e-8 * abs(exact).max() for r in results["top_residuals"])
    assert doc["cost"]["hvps"] == results["lanczos_steps"] + 1  # + one product's rounding
    assert doc["settings"]["dtype"] == "float64" and doc["checkpoint"]["n_params"] == len(eigenvalues)


def test_real_mlp_float64_matches_its_dense_hessian(cli):
    from helpers.exact import full_batch_loss
    from helpers.samples import digits, loaded

    code, doc, _ = cli("spectrum", MLP_CKPT, "--dtype", "float64", "--set", "data.max_samples=400",
                       "--top", "5", "--tol", "1e-7", "--json")
    assert code == 0
    problem = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=400").problem
    x, y = digits(400)
    exact = torch.linalg.eigvalsh(dense_hessian(full_batch_loss(problem.objective.model, problem, x, y),
                                                problem.theta0))
    assert relative_error(doc["results"]["top_eigenvalues"], exact[-5:].flip(0)) < 1e-4
    assert doc["settings"]["n_samples"] == 400 and doc["settings"]["config"].endswith("landscape.yaml")
    assert doc["results"]["loss"] > 0 and 0.9 < doc["results"]["accuracy"] <= 1


def test_same_seed_same_numbers(cli):
    args = ("spectrum", MLP_CKPT, "--set", "data.max_samples=200", "--top", "2", "--json")
    first, second = cli(*args)[1], cli(*args)[1]
    assert first["results"]["top_eigenvalues"] == second["results"]["top_eigenvalues"]
    assert first["checkpoint"]["sha256"] == second["checkpoint"]["sha256"]


def test_table_csv_and_markdown_show_the_same_numbers(cli):
    args = ("spectrum", MLP_CKPT, "--set", "data.max_samples=200", "--top", "3", "--bottom", "1")
    doc = cli(*args, "--json")[1]
    table = cli(*args, "--format", "table")[2].stdout
    rows = list(csv.DictReader(io.StringIO(cli(*args, "--format", "csv")[2].stdout)))
    markdown = cli(*args, "--format", "md")[2].stdout
    top = doc["results"]["top_eigenvalues"]
    assert [float(r["eigenvalue"]) for r in rows if r["end"] == "top"] == pytest.approx(top, rel=1e-12)
    assert [r["end"] for r in rows] == ["top"] * 3 + ["bottom"]
    assert f"{top[0]:.6g}" in table and f"{top[0]:.6g}" in markdown
    assert "converged" in table and markdown.count("\n|") >= 5


def test_unconverged_budget_is_flagged_with_a_warning(cli):
    code, doc, _ = cli("spectrum", MLP_CKPT, "--set", "data.max_samples=200", "--top", "5",
                       "--tol", "1e-9", "--max-hvps", "6", "--json")
    assert code == 0
    assert doc["results"]["lanczos_steps"] == 6
    assert not all(doc["results"]["top_converged"])
    assert any("did not reach" in w for w in doc["warnings"])


def test_engine_options_reach_the_engine_and_do_not_change_the_numbers(cli):
    args = ("spectrum", MLP_CKPT, "--dtype", "float64", "--set", "data.max_samples=300", "--top", "3",
            "--tol", "1e-8", "--json")
    cached = cli(*args, "--memory-budget", "1GiB")[1]
    streamed = cli(*args, "--memory-budget", "0")[1]
    forced = cli(*args, "--set", "engine.memory_budget=0", "--hvp-strategy", "cached")[1]
    assert cached["settings"]["hvp_strategy"] == "cached" and cached["settings"]["memory_budget_mb"] == 1024
    assert streamed["settings"]["hvp_strategy"] == "stream" and streamed["settings"]["memory_budget_mb"] == 0
    assert forced["settings"]["hvp_strategy"] == "cached"
    assert streamed["results"]["top_eigenvalues"] == pytest.approx(cached["results"]["top_eigenvalues"],
                                                                   rel=1e-10)
    assert cached["settings"]["config_sha256"] == streamed["settings"]["config_sha256"]


@pytest.mark.parametrize(("option", "named"), [(("--memory-budget", "lots"), "engine.memory_budget"),
                                               (("--set", "engine.compile=maybe"), "engine.compile"),
                                               (("--set", "engine.strategy=fast"), "engine.strategy")])
def test_bad_engine_settings_exit_2_naming_the_key(cli, option, named):
    code, doc, result = cli("spectrum", MLP_CKPT, *option, "--json")
    assert code == 2 and doc is None
    assert named in result.output and "Traceback" not in result.output
