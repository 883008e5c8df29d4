"""GGN, Fisher and empirical Fisher (issue 31 §1) against closed forms and dense ``torch.func``
references, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape_cli.engine.curvature import CurvatureOperator
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.passes import Passes
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.errors import LandscapeError
from landscape_cli.loading.data import Batches

CPU = torch.device("cpu")


def problem_of(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, size: int = 16):
    batches = Batches(list(zip(x.split(size), y.split(size))), [len(b) for b in x.split(size)])
    return build_problem(model.double(), criterion_loss(criterion), batches, device=CPU, dtype=torch.float64)


def dense(operator) -> torch.Tensor:
    return operator(torch.eye(operator.size, dtype=torch.float64))


def data(n: int = 48, d: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64), generator


def test_mse_linear_regression_hessian_and_ggn_are_two_xtx_over_n():
    x, generator = data()
    y = torch.randn(48, 1, generator=generator, dtype=torch.float64)
    problem = problem_of(nn.Linear(4, 1, bias=False), nn.MSELoss(), x, y)
    ggn = dense(CurvatureOperator(problem, Passes(problem), "ggn"))
    expected = 2 * x.T @ x / len(x)  # MSELoss is the mean of (xᵀw − y)²
    assert torch.allclose(ggn, expected, atol=1e-12)
    assert torch.allclose(dense(HVPEngine(problem)), expected, atol=1e-12)


def test_logistic_regression_ggn_is_x_diag_p_1_minus_p_x_over_n_and_the_hessian():
    x, generator = data()
    y = torch.randint(0, 2, (48, 1), generator=generator).double()
    model = nn.Linear(4, 1, bias=False)
    problem = problem_of(model, nn.BCEWithLogitsLoss(), x, y)
    p = torch.sigmoid(x @ model.weight.detach()[0])
    expected = (x.T * (p * (1 - p))) @ x / len(x)
    assert torch.allclose(dense(CurvatureOperator(problem, Passes(problem), "ggn")), expected, atol=1e-12)
    assert torch.allclose(dense(HVPEngine(problem)), expected, atol=1e-12)


def mlp_problem():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, generator = data()
    y = torch.randint(0, 3, (48,), generator=generator)
    return problem_of(model, nn.CrossEntropyLoss(), x, y), x, y


def test_a_nonlinear_mlps_ggn_and_hessian_minus_ggn_are_the_dense_ones():
    problem, x, y = mlp_problem()
    model, theta = problem.objective.model, problem.theta0

    def outputs(t, inputs):
        return torch.func.functional_call(model, problem.unflatten(t, prefix=""), (inputs,))

    ggn = torch.zeros(problem.n, problem.n, dtype=torch.float64)
    residual = torch.zeros_like(ggn)
    for xb, yb in zip(x.split(16), y.split(16)):
        jacobian = torch.func.jacrev(outputs)(theta, xb).reshape(-1, problem.n)  # (16·3, n)
        out = outputs(theta, xb)
        h_out = torch.func.hessian(nn.functional.cross_entropy)(out, yb).reshape(48, 48)
        g_out = torch.func.grad(nn.functional.cross_entropy)(out, yb).reshape(-1)
        weight = len(xb) / len(x)
        ggn += weight * jacobian.T @ h_out @ jacobian

        def along(t, xb=xb, g_out=g_out):  # Σ_k (∂ℓ/∂o_k) o_k(θ): its Hessian is the residual term
            return outputs(t, xb).reshape(-1) @ g_out

        residual += weight * torch.func.hessian(along)(theta)
    found = dense(CurvatureOperator(problem, Passes(problem), "ggn"))
    assert torch.allclose(found, ggn, atol=1e-10, rtol=0)
    assert torch.allclose(dense(HVPEngine(problem)) - found, residual, atol=1e-10, rtol=0)


def test_the_empirical_fisher_is_the_mean_outer_product_of_per_sample_gradients():
    problem, x, y = mlp_problem()
    model, theta = problem.objective.model, problem.theta0

    def sample_loss(t, xi, yi):
        out = torch.func.functional_call(model, problem.unflatten(t, prefix=""), (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(theta, x, y)
    expected = grads.T @ grads / len(x)
    found = dense(CurvatureOperator(problem, Passes(problem), "empirical-fisher"))
    assert torch.allclose(found, expected, atol=1e-12)


@pytest.mark.parametrize("criterion", [nn.CrossEntropyLoss(), nn.MSELoss(), nn.BCEWithLogitsLoss()],
                         ids=["cross-entropy", "mse", "bce"])
def test_the_sampled_fisher_approaches_the_ggn_within_its_interval(criterion):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, generator = data(32)
    y = (torch.randint(0, 3, (32,), generator=generator) if isinstance(criterion, nn.CrossEntropyLoss)
         else torch.rand(32, 3, generator=generator, dtype=torch.float64).round())
    problem = problem_of(model, criterion, x, y)
    ggn = dense(CurvatureOperator(problem, Passes(problem), "ggn"))
    draws = torch.stack([dense(CurvatureOperator(problem, Passes(problem), "fisher", seed=s))
                         for s in range(40)])
    traces = draws.diagonal(dim1=1, dim2=2).sum(dim=1)
    mean, stderr = traces.mean(), traces.std() / 40**0.5
    assert abs(mean - ggn.trace()) < 3 * stderr
    averaged = dense(CurvatureOperator(problem, Passes(problem), "fisher", samples=400))
    assert torch.linalg.matrix_norm(averaged - ggn) < 0.15 * torch.linalg.matrix_norm(ggn)


def test_a_loss_fn_or_nll_is_refused_with_the_reason():
    x, generator = data()
    y = torch.randint(0, 3, (48,), generator=generator)
    batches = Batches([(x, y)], [48])
    problem = build_problem(nn.Linear(4, 3).double(), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                            batches, device=CPU, dtype=torch.float64)
    with pytest.raises(LandscapeError, match="known criterion"):
        CurvatureOperator(problem, Passes(problem), "ggn")
    nll = problem_of(nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1)), nn.NLLLoss(), x, y)
    with pytest.raises(LandscapeError, match="GGN is 0"):
        CurvatureOperator(nll, Passes(nll), "ggn")
    assert CurvatureOperator(nll, Passes(nll), "empirical-fisher").size == 15


def test_the_cli_measures_the_chosen_matrix_and_says_which(tmp_path):
    from helpers.adversarial import assert_one_error
    from helpers.runners import invoke
    from helpers.samples import CONFIGS, MLP_CKPT

    small = ["-c", CONFIGS / "mlp.yaml", "--set", "data.max_samples=200", "--dtype", "float64"]
    ran = invoke(["spectrum", MLP_CKPT, *small, "--top", "2", "--curvature", "ggn", "--json"])
    assert ran.returncode == 0, ran.detail()
    import json

    doc = json.loads(ran.stdout)
    assert doc["settings"]["curvature"] == "ggn"
    hessian = json.loads(invoke(["spectrum", MLP_CKPT, *small, "--top", "2", "--json"]).stdout)
    assert "curvature" not in hessian["settings"]
    # at a well-fit minimum the residual term is small: the GGN's top eigenvalue is near H's
    assert doc["results"]["top_eigenvalues"][0] == pytest.approx(hessian["results"]["top_eigenvalues"][0],
                                                                  rel=0.2)
    table = invoke(["trace", MLP_CKPT, *small, "--curvature", "empirical-fisher", "--max-hvps", "20",
                    "-f", "table"])
    assert "trace of the empirical-fisher" in table.stdout
    assert_one_error(invoke(["classify-critical-point", MLP_CKPT, *small, "--curvature", "fisher"]),
                     ["--curvature fisher", "needs the Hessian"])


def test_the_products_are_curvlinops_where_it_is_installed():
    """An optional test: ``pip install --no-deps -r benchmarks/requirements.txt`` brings curvlinops."""
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops is not installed "
                                     "(pip install --no-deps -r benchmarks/requirements.txt)")
    problem, x, y = mlp_problem()
    model = problem.objective.model
    data = list(zip(x.split(16), y.split(16)))
    eye = torch.eye(problem.n, dtype=torch.float64)
    pairs = ((curvlinops.GGNLinearOperator, "ggn"), (curvlinops.EFLinearOperator, "empirical-fisher"))
    for theirs, ours in pairs:
        reference = theirs(model, nn.CrossEntropyLoss(), list(model.parameters()), data) @ eye
        assert torch.allclose(dense(CurvatureOperator(problem, Passes(problem), ours)), reference,
                              atol=1e-12, rtol=0), ours
