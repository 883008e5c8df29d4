"""Everything cheap is checked before anything expensive (issue 17.4): a gate on a number the
command never reports, a bad ``-o`` and a command's own bad options fail before the model,
data or checkpoint are loaded, let alone an HVP spent."""

from __future__ import annotations

import pytest
from helpers.adversarial import FAST, assert_one_error, write_config
from helpers.runners import invoke
from helpers.samples import MLP_CKPT as MLP

from landscape_cli.analyses.critical import CriticalPointResult
from landscape_cli.analyses.spectrum import SpectrumResult
from landscape_cli.analyses.trace import TraceResult
from landscape_cli.report.gates import check_names, parse_gate


@pytest.fixture
def no_loading(monkeypatch):
    """Loading the checkpoint fails the test: the checks must come first."""
    from landscape_cli.session import Session

    def refuse(*args, **kwargs):
        raise AssertionError("the run loaded its inputs before checking its options")

    monkeypatch.setattr(Session, "load", refuse)


@pytest.mark.parametrize("args, needles", [
    (["spectrum", "--fail-if", "sharpness>3"], ["sharpness", "lambda_max", "top_N"]),
    (["spectrum", "--fail-if", "top_0>3"], ["top_0"]),
    (["trace", "--fail-if", "lambda_max>3"], ["lambda_max", "trace_per_param"]),
    (["classify-critical-point", "--fail-if", "top_1>3"], ["top_1", "negative_fraction"]),
    (["spectrum", "-o", "/no/such/folder/r.json"], ["-o", "does not exist"]),
    (["spectrum", "--tol", "0"], ["--tol", "between 0 and 1"]),
    (["spectrum", "--steps", "1", "--density"], ["--steps", "at least 2"]),
    (["trace", "--rtol", "0"], ["--rtol", "greater than 0"]),
    (["classify-critical-point", "--eig-rtol", "-1"], ["--eig-rtol", "greater than 0"]),
    (["spectrum", "--plot", "density.txt"], ["--plot", ".png"]),
])
def test_fails_before_loading(no_loading, tmp_path, args, needles):
    config = write_config(tmp_path / "c.yaml")
    ran = invoke([args[0], MLP, "-c", config, *FAST[2:], *args[1:]])
    assert_one_error(ran, needles)


@pytest.mark.parametrize("result, examples", [
    (SpectrumResult, ["lambda_max", "lambda_min", "top_1", "top_12", "bottom_3", "negative_mass"]),
    (TraceResult, ["trace", "trace_per_param", "stderr", "relative_stderr"]),
    (CriticalPointResult, ["grad_norm", "lambda_min", "lambda_max", "negative_fraction"]),
])
def test_gate_names_accept_what_the_results_report(result, examples):
    check_names([parse_gate(f"{name}>0") for name in examples], result.GATES)


def test_gate_names_match_the_scalars_of_a_real_run(tmp_path):
    """What a run's ``scalars`` reports is exactly what its GATES admit (no name missing)."""
    import json

    config = write_config(tmp_path / "c.yaml")
    ran = invoke(["spectrum", MLP, "-c", config, *FAST, "--bottom", "2", "--density", "--runs", "2",
                  "--steps", "8", "--json", "--fail-if", "top_1>1e9", "--fail-if", "bottom_2>1e9",
                  "--fail-if", "negative_weight_ratio>2", "--fail-if", "lambda_min>1e9"])
    assert ran.returncode == 0, ran.detail()
    assert [g["violated"] for g in json.loads(ran.stdout)["gates"]] == [False] * 4
