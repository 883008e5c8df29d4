"""classify-critical-point on quadratics whose critical-point type we choose, and the samples."""

from __future__ import annotations

import pytest
from helpers.quadratic import save_quadratic_checkpoint, write_quadratic_config
from helpers.samples import ROOT

from landscape_cli.analyses.critical import decide

CASES = {
    # name: (eigenvalues, gradient_scale, verdict)
    "minimum": ([1.0 + 19.0 * i / 59 for i in range(60)], 0.0, "minimum"),  # condition number 20
    "saddle": ([-4.0, -2.5, -1.0] + [0.5 + 0.1 * i for i in range(57)], 0.0, "saddle"),
    "maximum": ([-(1.0 + 0.3 * i) for i in range(60)], 0.0, "maximum"),
    "degenerate": ([0.0] * 12 + [0.5 + 0.2 * i for i in range(48)], 0.0, "degenerate"),
    "not_critical": ([1.0 + 19.0 * i / 59 for i in range(60)], 1.0, "not_critical"),
}


@pytest.mark.parametrize("name", CASES)
def test_verdict_on_quadratics(cli, tmp_path, name):
    eigenvalues, gradient_scale, verdict = CASES[name]
    config = write_quadratic_config(tmp_path, eigenvalues, seed=2, gradient_scale=gradient_scale)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=2, gradient_scale=gradient_scale)
    code, doc, result = cli("classify-critical-point", ckpt, "-c", config, "--no-density", "--json")
    assert code == 0, result.output
    results = doc["results"]
    assert results["verdict"] == verdict
    assert results["lambda_min"] == pytest.approx(min(eigenvalues), abs=1e-6 * max(map(abs, eigenvalues)))
    assert results["lambda_max"] == pytest.approx(max(eigenvalues), abs=1e-6 * max(map(abs, eigenvalues)))
    assert len(results["evidence"]) >= 3 and verdict.split("_")[0] in results["evidence"][0]
    if gradient_scale == 0:
        assert results["grad_norm"] == 0.0
    else:
        assert results["grad_norm"] > results["grad_threshold"]


@pytest.mark.parametrize(
    ("theta_min", "theta_max", "verdict"),
    [(1.0, 5.0, "minimum"), (-5.0, -1.0, "maximum"), (-1.0, 5.0, "saddle"),
     (1e-5, 5.0, "degenerate"), (-1e-5, 5.0, "degenerate"), (-5.0, 1e-5, "degenerate")],
)
def test_decision_rule(theta_min, theta_max, verdict):
    assert decide(0.0, 1e-6, theta_min, 1e-9, theta_max, 1e-9, tau=5e-3)[0] == verdict


def test_residual_keeps_a_minimum_from_being_claimed_too_early():
    # θ_min = 0.01 looks positive, but with residual 0.02 an eigenvalue could sit at -0.01
    assert decide(0.0, 1.0, 0.01, 0.02, 5.0, 1e-9, tau=5e-3)[0] == "degenerate"


@pytest.mark.parametrize("option", [["--eig-rtol", "0"], ["--grad-rtol", "-1"], ["--steps", "1"]])
def test_bad_options_exit_2(cli, option):
    ckpt = ROOT / "sample_checkpoints" / "mlp" / "seed0_epoch100.pt"
    code, _, result = cli("classify-critical-point", ckpt, "--set", "data.max_samples=50", *option)
    assert code == 2 and "Traceback" not in result.output


def test_early_checkpoint_is_not_critical(cli):
    ckpt = ROOT / "sample_checkpoints" / "mlp" / "seed0_epoch001.pt"
    code, doc, _ = cli("classify-critical-point", ckpt, "--no-density", "--dtype", "float64",
                       "--max-hvps", "200", "--json")
    assert code == 0
    assert doc["results"]["verdict"] == "not_critical"
    assert doc["results"]["grad_norm"] > 0.1


def test_negative_fraction_of_a_quadratic_with_25_percent_negative_eigenvalues(cli, tmp_path):
    eigenvalues = [-(0.5 + 2 * i / 49) for i in range(50)] + [0.05 + 3 * i / 149 for i in range(150)]
    config = write_quadratic_config(tmp_path, eigenvalues, seed=4, gradient_scale=0.0)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=4, gradient_scale=0.0)
    code, doc, _ = cli("classify-critical-point", ckpt, "-c", config, "--json")
    assert code == 0
    results = doc["results"]
    assert results["verdict"] == "saddle"
    assert results["negative_fraction"] == pytest.approx(0.25, abs=0.08)
    exact_ratio = sum(-v for v in eigenvalues if v < 0) / sum(abs(v) for v in eigenvalues)
    assert results["negative_weight_ratio"] == pytest.approx(exact_ratio, abs=0.08)
    assert any("SLQ" in line for line in results["evidence"])


@pytest.mark.parametrize(
    ("sample", "verdict"),
    [("mlp/seed0_epoch001.pt", "not_critical"), ("mlp/seed1_epoch100.pt", "degenerate"),
     ("cnn_bn/final.pt", "degenerate"), ("char_transformer/final.pt", "degenerate")],
)
def test_sensible_explained_verdict_on_each_sample(cli, sample, verdict):
    code, doc, _ = cli("classify-critical-point", ROOT / "sample_checkpoints" / sample,
                       "--max-hvps", "150", "--runs", "2", "--steps", "30", "--json")
    assert code == 0
    results = doc["results"]
    assert results["verdict"] == verdict
    assert results["lambda_max"] > 0 and results["lambda_min"] < 0  # trained nets: both signs
    # tiny negative curvature: well under 1% of the largest eigenvalue
    assert abs(results["lambda_min"]) < 0.1 * results["lambda_max"]
    assert 0 <= results["negative_fraction"] <= 1
    explanation = results["evidence"][0]
    assert ("flat directions" in explanation) == (verdict == "degenerate")


@pytest.mark.parametrize("name", ["minimum", "saddle"])
def test_condition_number_of_a_minimum_and_none_with_the_reason_otherwise(cli, tmp_path, name):
    """κ = λ_max/λ_min = 20/1 on the minimum of CASES, with its first-order error from the two
    residuals; a saddle has none, and says why. A gate on it passes, fails, or fails on null."""
    eigenvalues, gradient_scale, verdict = CASES[name]
    config = write_quadratic_config(tmp_path, eigenvalues, seed=2, gradient_scale=gradient_scale)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=2, gradient_scale=gradient_scale)
    code, doc, result = cli("classify-critical-point", ckpt, "-c", config, "--no-density", "--json",
                            "--fail-if", "condition_number>25")
    results = doc["results"]
    assert results["verdict"] == verdict
    if verdict == "minimum":
        assert code == 0, result.output
        kappa = max(eigenvalues) / min(eigenvalues)
        assert results["condition_number"] == pytest.approx(kappa, rel=1e-6)
        assert results["condition_number"] == pytest.approx(
            results["lambda_max"] / results["lambda_min"], rel=1e-12)
        assert results["condition_number_error"] == pytest.approx(results["condition_number"] * (
            results["lambda_max_residual"] / results["lambda_max"]
            + results["lambda_min_residual"] / results["lambda_min"]), rel=1e-9)
        assert results["condition_number_note"] is None
        code, doc, _ = cli("classify-critical-point", ckpt, "-c", config, "--no-density",
                           "--json", "--fail-if", "condition_number>19")
        assert code == 1 and doc["gates"][0]["value"] == results["condition_number"]
    else:
        assert code == 1, result.output  # no number to compare: the gate fails
        assert results["condition_number"] is None and results["condition_number_error"] is None
        assert "saddle, not a minimum" in results["condition_number_note"]
        assert doc["gates"] == [{"expr": "condition_number>25", "value": None, "violated": True}]


@pytest.mark.parametrize("name", ["minimum", "saddle"])
def test_spectrum_bottom_reports_the_condition_number_where_positive_definite(cli, tmp_path, name):
    eigenvalues, _, _ = CASES[name]
    config = write_quadratic_config(tmp_path, eigenvalues, seed=2, gradient_scale=0.0)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=2, gradient_scale=0.0)
    code, doc, result = cli("spectrum", ckpt, "-c", config, "--top", "1", "--bottom", "1", "--json")
    assert code == 0, result.output
    results = doc["results"]
    if name == "minimum":
        assert results["condition_number"] == pytest.approx(20.0, rel=1e-6)
        assert results["condition_number_error"] > 0 and "condition_number_note" not in results
    else:
        assert "condition_number" not in results
        assert "not positive definite" in results["condition_number_note"]
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "1", "--json")
    assert code == 0 and not any(key.startswith("condition") for key in doc["results"])


def test_an_interrupt_during_the_density_reports_the_verdict(monkeypatch, tmp_path):
    """``Interrupted`` (as the SIGINT handler raises it) inside SLQ: the report holds the
    verdict and the Lanczos numbers, no negative_fraction, status interrupted."""
    from landscape_cli import runner
    from landscape_cli.analyses import critical
    from landscape_cli.errors import Interrupted
    from landscape_cli.options import RunOptions

    def interrupted(*args, **kwargs):
        raise Interrupted(2, "SIGINT")

    monkeypatch.setattr(critical, "spectral_density", interrupted)
    eigenvalues, _, _ = CASES["minimum"]
    config = write_quadratic_config(tmp_path, eigenvalues, seed=2, gradient_scale=0.0)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, seed=2, gradient_scale=0.0)
    prepared = runner.prepare("classify-critical-point", ckpt, RunOptions.of({"config": config}), {})
    report, stop = runner.execute(prepared)
    doc = report.to_dict()
    assert stop is not None and stop.exit_code == 130 and doc["status"] == "interrupted"
    results = doc["results"]
    assert results["verdict"] == "minimum" and results["negative_fraction"] is None
    assert results["condition_number"] == pytest.approx(20.0, rel=1e-6)
    assert any(w.startswith("interrupted during the SLQ density") for w in doc["warnings"])
