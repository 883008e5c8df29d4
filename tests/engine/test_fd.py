"""Issue 27.1: the finite-difference engine (``--hvp-strategy fd``): H·v from two ordinary
gradients per step, Richardson-extrapolated, each product with a measured error that the
spectrum's residuals carry. Checked against exact products: a quadratic's matrix, the float64
MLP's exact HVP, and a float32 attention model's dense float64 Hessian (math backend)."""

from __future__ import annotations

import runpy

import pytest
import torch
from helpers.exact import dense_hessian
from helpers.quadratic import make_data, make_quadratic, quadratic_loss
from helpers.samples import CONFIGS, MLP_CKPT, loaded
from torch import nn

import landscape_cli
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem
from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.linalg.operator import product_error, restrict
from landscape_cli.linalg.trace import hutchpp
from landscape_cli.loading.data import Batches

CPU = torch.device("cpu")
ATTENTION_MODEL = '''
import torch
from torch import nn
import torch.nn.functional as F


class CausalAttention(nn.Module):
    """Two causal heads of width 3 over 5 tokens by F.scaled_dot_product_attention, then a
    read-out of the last token: 111 parameters."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.qkv = nn.Linear(6, 18)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (2, 3)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h.transpose(1, 2).flatten(2)[:, -1])


def make(seed=0):
    return CausalAttention(seed)


def data(samples=24):
    tokens = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 5, 6, generator=tokens)
    return x, torch.randint(0, 3, (samples,), generator=tokens)
'''

ATTENTION_CONFIG = """\
model: {factory: causal_attention.py:make}
data: {factory: causal_attention.py:data, batch_size: 10}
device: cpu
dtype: float32
"""


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def relative(products: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((products - exact).norm(dim=1) / exact.norm(dim=1)).max())


def rows(n: int, k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def quadratic_problem(eigenvalues):
    model = make_quadratic(eigenvalues, seed=0)
    x, y = make_data(12)
    batches = Batches([(x[:5], y[:5]), (x[5:], y[5:])], [5, 7])
    return model, build_problem(model, quadratic_loss, batches, device=CPU, dtype=torch.float64)


def test_a_quadratic_is_exact_up_to_rounding():
    """A quadratic's central difference has no truncation: what is left is the gradients'
    rounding over the step, ~ε/h = ε^(2/3) ≈ 4e-11 relative (a one-sided difference would be
    off by ~h ≈ 6e-6), and the measured error covers it."""
    model, problem = quadratic_problem(torch.linspace(-3, 10, 30))
    engine = HVPEngine(problem, strategy="fd")
    vectors = rows(problem.n, k=4)
    products = engine.hvp(vectors)
    exact = vectors @ model.matrix
    assert relative(products, exact) < 20 * torch.finfo(torch.float64).eps ** (2 / 3)
    error = (products - exact).norm(dim=1) / vectors.norm(dim=1)
    assert float(error.max()) <= engine.product_error()
    # two gradients per row and two more for the first row's check (a second step), all in
    # one pass over the (joined) batches, besides the pass that joined them
    assert engine.cost.grads == 2 * 4 + 2 and engine.cost.data_passes == 2 and engine.cost.hvps == 4
    assert engine.hvp(torch.zeros(problem.n, dtype=torch.float64)).abs().max() == 0  # H·0


def test_the_float64_mlp_is_within_1e_7_of_the_exact_hvp():
    problem = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600").problem
    vectors = rows(problem.n)
    exact = HVPEngine(problem, strategy="stream").hvp(vectors)
    engine = HVPEngine(problem, strategy="fd")
    products = engine.hvp(vectors)
    assert relative(products, exact) < 1e-7
    error = (products - exact).norm(dim=1) / vectors.norm(dim=1)
    assert float(error.max()) <= engine.product_error() < 1e-7 * float(exact.norm(dim=1).min())
    described = engine.describe()
    assert described["hvp_strategy"] == "fd" and "--hvp-strategy fd" in described["hvp_strategy_reason"]
    assert described["fd_product_error"] == engine.product_error()
    assert engine.exact() is None  # float64 products need no reference


def test_the_error_is_measured_at_the_vectors_a_result_is_reported_at():
    """A central difference's truncation follows the third derivative along v: on the float32
    MLP the error along the top eigenvectors is 10–50× a random vector's (measured: 1.2e-4
    against 2–3e-6), so the error measured on the schedule's random vector would not bound it.
    A checked product extrapolates every row (Richardson) and measures its error, which bounds
    the true error at each."""
    problem64 = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600").problem
    problem32 = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600", "dtype=float32").problem
    exact = HVPEngine(problem64, strategy="stream")
    top = lanczos(exact, top=3, tol=1e-9, generator=torch.Generator().manual_seed(0)).top.vectors
    engine = HVPEngine(problem32, strategy="fd")
    random = rows(problem32.n, k=1)
    engine.hvp(random)  # the first product: its first row is measured
    on_random = engine.product_error()
    assert float((engine.hvp(random).double() - exact.hvp(random)).norm() / random.norm()) <= on_random
    truth = (engine.hvp(top).double() - exact.hvp(top)).norm(dim=1)  # unit vectors
    assert float(truth.max()) > 10 * on_random  # the random vector's error does not bound these
    grads = engine.cost.grads
    products = engine.checked(top).double()
    assert engine.cost.grads == grads + 6 * 3  # D at h, 2h and 4h for each row
    checked_error = (products - exact.hvp(top)).norm(dim=1)
    assert float(checked_error.max()) <= engine.product_error()
    # Richardson-extrapolated: far closer than the plain central difference at these vectors
    assert float(checked_error.max()) < float(truth.min()) / 4


def test_a_trace_by_fd_products_carries_their_error_in_its_interval():
    """A sketch that spans the quadratic's 30 dimensions leaves no probe variance (stderr 0):
    the interval is the products' measured error alone, n·δ, and holds the exact trace, which
    a zero-width interval around the fd estimate would miss."""
    eigenvalues = torch.linspace(-3, 10, 30, dtype=torch.float64)
    _, problem = quadratic_problem(eigenvalues)
    engine = HVPEngine(problem, strategy="fd")
    estimate = hutchpp(engine, rtol=0.0, max_matvecs=90, sketch=30,
                       generator=torch.Generator().manual_seed(0))
    truth = float(eigenvalues.sum())
    assert estimate.stderr == 0 and estimate.trace != truth
    assert estimate.bias_bound == pytest.approx(30 * engine.rayleigh_error()) and estimate.bias_bound > 0
    assert engine.rayleigh_error() <= engine.product_error()
    assert estimate.ci95[0] <= truth <= estimate.ci95[1]
    exact = hutchpp(HVPEngine(problem, strategy="stream"), rtol=0.0, max_matvecs=90, sketch=30,
                    generator=torch.Generator().manual_seed(0))
    assert exact.bias_bound == 0


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """A float32 SDPA model on 3 batches, its config and checkpoint, and the exact float64
    Hessian (the objective runs attention by SDPA's math backend)."""
    folder = tmp_path_factory.mktemp("fd_attention")
    for name, text in {"causal_attention.py": ATTENTION_MODEL, "landscape.yaml": ATTENTION_CONFIG}.items():
        (folder / name).write_text(text)
    namespace = runpy.run_path(str(folder / "causal_attention.py"))
    torch.save(namespace["make"]().state_dict(), folder / "ckpt.pt")
    whole = Batches([namespace["data"]()], [24])  # one batch: the dataset mean in one call
    double = build_problem(namespace["make"](), cross_entropy, whole, device=CPU, dtype=torch.float64)
    batch = double.batch(0)
    hessian = dense_hessian(lambda theta: double.mean_batch_loss(theta, batch), double.theta0)
    return folder, namespace, hessian


def test_float32_attention_is_within_its_reported_error_of_the_exact_product(attention):
    """The fused kernels have no double backward; fd runs through them, and its float32
    products are within their own measured error of the exact float64 (math backend) ones."""
    _, namespace, hessian = attention
    x, y = namespace["data"]()
    problem = build_problem(namespace["make"](), cross_entropy,
                            Batches([(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])],
                                    [10, 10, 4]), device=CPU, dtype=torch.float32)
    assert problem.attention
    engine = HVPEngine(problem, strategy="fd")
    assert problem.objective.fused_attention and problem.objective.attention_kernels == "sdpa-fused"
    vectors = rows(problem.n, k=4)
    products = engine.hvp(vectors).double()
    exact = vectors @ hessian
    error = (products - exact).norm(dim=1) / vectors.norm(dim=1)
    assert float(error.max()) <= engine.product_error()
    assert relative(products, exact) < 1e-3  # float32: ~ε^(3/4), not ε
    # the measured error is the distance to the exact products, float32 rounding included:
    # an fd engine needs no float64 reference copy of the model
    assert engine.exact() is None and engine.approximate


class NoSecondDerivative(torch.autograd.Function):
    """tanh whose backward has no derivative of its own, as custom kernels often have none:
    a double backward through it raises."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        return FirstDerivativeOnly.apply(grad, y)


class FirstDerivativeOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, y):
        return grad * (1 - y * y)

    @staticmethod
    def backward(ctx, _):
        raise NotImplementedError("tanh's second derivative is not implemented")


class CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(NoSecondDerivative.apply(self.a(x)))


def test_auto_goes_fd_where_exact_products_fail_and_says_why():
    torch.manual_seed(1)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    model = CustomOpNet().double()
    problem = build_problem(model, cross_entropy, Batches([(x[:6], y[:6]), (x[6:], y[6:])], [6, 6]),
                            device=CPU, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="second derivative"):
        HVPEngine(problem, strategy="stream").hvp(rows(problem.n, k=1))
    engine = HVPEngine(problem)
    vectors = rows(problem.n)
    products = engine.hvp(vectors)
    theta = problem.theta0

    def plain(flat):  # the same function through torch.tanh, which has a second derivative
        params = problem.unflatten(flat, prefix="")
        hidden = torch.tanh(nn.functional.linear(x, params["a.weight"], params["a.bias"]))
        return nn.functional.cross_entropy(nn.functional.linear(hidden, params["b.weight"],
                                                                params["b.bias"]), y)

    exact = vectors @ dense_hessian(plain, theta)
    assert relative(products, exact) < 1e-7
    assert engine.mode == "fd"
    assert engine.describe()["hvp_strategy_reason"].startswith("auto: exact products failed")
    assert any("finite differences" in w for w in engine.warnings)


def test_lanczos_adds_the_products_error_to_its_residuals():
    """The residual floor carries the fd products' error, also through a restriction."""
    eigenvalues = torch.linspace(-3, 10, 30, dtype=torch.float64)
    _, problem = quadratic_problem(eigenvalues)
    engine = HVPEngine(problem, strategy="fd")
    run = lanczos(engine, top=2, tol=1e-9, generator=torch.Generator().manual_seed(0))
    assert run.rounding >= engine.product_error() > 0
    for value, residual, truth in zip(run.top.values, run.top.residuals, [10.0, eigenvalues[-2]]):
        assert abs(value - float(truth)) <= residual
    assert product_error(restrict(engine, [slice(0, 10)])) == engine.product_error()


@pytest.mark.slow
def test_spectrum_fd_gives_the_exact_top_3_within_its_residuals():
    """Through the CLI's API on the sample MLP: float64 and float32 runs by fd against the
    exact float64 run; the error of the products shows in ``residual_floor``."""
    common = dict(top=3, set=["data.max_samples=600"])
    config = CONFIGS / "mlp.yaml"
    exact = landscape_cli.analyze("spectrum", MLP_CKPT, config, dtype="float64", tol=1e-9, **common)
    for dtype in ("float64", "float32"):
        fd = landscape_cli.analyze("spectrum", MLP_CKPT, config, dtype=dtype, hvp_strategy="fd",
                                   **common)
        settings, results = fd.settings, fd.results
        assert settings["hvp_strategy"] == "fd" and settings["fd_product_error"] > 0
        if dtype == "float64":  # float32 is checked against float64 fd products, theirs added
            assert results["residual_floor"] >= settings["fd_product_error"]
        for value, residual, truth, truth_residual in zip(
                results["top_eigenvalues"], results["top_residuals"],
                exact.results["top_eigenvalues"], exact.results["top_residuals"]):
            assert abs(value - truth) <= residual + truth_residual, dtype


@pytest.mark.slow
def test_the_report_says_attention_keeps_its_fused_kernels(attention, cli):
    folder, _, _ = attention
    code, doc, ran = cli("spectrum", str(folder / "ckpt.pt"), "-c", str(folder / "landscape.yaml"),
                         "--hvp-strategy", "fd", "--top", "1", "--json")
    assert code == 0, ran.detail()
    assert doc["settings"]["attention"] == "sdpa-fused" and doc["settings"]["hvp_strategy"] == "fd"
    code, doc, ran = cli("spectrum", str(folder / "ckpt.pt"), "-c", str(folder / "landscape.yaml"),
                         "--top", "1", "--json")
    assert code == 0, ran.detail()
    assert doc["settings"]["attention"] == "sdpa-math" and doc["settings"]["hvp_strategy"] != "fd"
