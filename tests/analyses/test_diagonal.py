"""``trace --diagonal`` (issue 31 §4): Hutchinson's diagonal with each entry's error, against
diag(2XᵀX/N) on linear regression and the exact diagonal of the sample MLP's Hessian."""

from __future__ import annotations

import json

import torch
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.linalg.diagonal import hutchinson_diagonal
from landscape_cli.loading.data import Batches


def test_linear_regression_diagonal_is_diag_of_two_xtx_over_n_within_its_errors():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator,
                                                                                  dtype=torch.float64)
    y = torch.randn(64, 1, generator=generator, dtype=torch.float64)
    problem = build_problem(nn.Linear(6, 1, bias=False).double(), criterion_loss(nn.MSELoss()),
                            Batches([(x, y)], [64]), device=torch.device("cpu"), dtype=torch.float64)
    found = hutchinson_diagonal(HVPEngine(problem), 400, torch.Generator().manual_seed(1))
    exact = torch.diag(2 * x.T @ x / 64)
    assert ((found.values - exact).abs() <= 3 * found.stderr).all()
    assert (found.stderr > 0).all() and found.probes == 400


def test_the_sample_mlps_exact_diagonal_lies_inside_the_error_bars(tmp_path):
    small = ["-c", CONFIGS / "mlp.yaml", "--set", "data.max_samples=200", "--dtype", "float64"]
    out = tmp_path / "diag.safetensors"
    ran = invoke(["trace", MLP_CKPT, *small, "--max-hvps", "20", "--diagonal", out,
                  "--diagonal-probes", "200", "--json"])
    assert ran.returncode == 0, ran.detail()
    report = json.loads(ran.stdout)["results"]["diagonal"]
    assert report["probes"] == 200 and report["stderr_file"].endswith("diag.stderr.safetensors")
    values, errors = load_file(out), load_file(tmp_path / "diag.stderr.safetensors")
    assert sorted(values) == ["0.bias", "0.weight", "2.bias", "2.weight"]  # named like the model's
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["matrix"] == "hessian" and handle.metadata()["probes"] == "200"

    import landscape_cli
    from landscape_cli.config import load_config
    from landscape_cli.session import Session

    session = Session(load_config(CONFIGS / "mlp.yaml", ["data.max_samples=200", "dtype=float64"]))
    problem = session.load(MLP_CKPT).problem
    engine = HVPEngine(problem)
    eye = torch.eye(problem.n, dtype=torch.float64)
    exact = torch.cat([(engine(eye[i:i + 256]) * eye[i:i + 256]).sum(dim=1)
                       for i in range(0, problem.n, 256)])
    estimate = torch.cat([values[n].reshape(-1) for n in problem.names])
    stderr = torch.cat([errors[n].reshape(-1) for n in problem.names])
    inside = ((estimate - exact).abs() <= 2 * stderr).double().mean()
    assert inside >= 0.9, float(inside)
    assert landscape_cli  # the same session API a notebook uses


def test_a_bad_diagonal_file_is_one_line(tmp_path):
    assert_one_error(invoke(["trace", MLP_CKPT, "-c", CONFIGS / "mlp.yaml", "--diagonal", tmp_path / "d.pt"]),
                     ["--diagonal", ".safetensors"])
