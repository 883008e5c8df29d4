"""Stability as the optimizer sees it (issue 29): the preconditioned λ_max against dense
eigenvalues on quadratics with a chosen second moment, the thresholds against torch.optim itself
(it converges at 0.95× and diverges at 1.05× the curvature the measures call the edge), and
batch sharpness against its closed form on linear regression."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers.quadratic import symmetric_with_spectrum
from torch import nn

from landscape_cli.analyses.sharpness import SharpnessOptions, sharpness
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.loading.data import Batches
from landscape_cli.loading.matching import Match
from landscape_cli.loading.optimizer_params import map_optimizer_state
from landscape_cli.loading.optimizer_state import read_optimizer_state

CPU = torch.device("cpu")
SIZES = {"a": 3, "c": 2}


class TwoParameterQuadratic(nn.Module):
    """½ θᵀAθ + bᵀθ over θ = (a, c), two parameters that may sit in two optimizer groups."""

    def __init__(self, matrix: torch.Tensor, sizes: dict[str, int] = SIZES, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        for name, size in sizes.items():
            self.register_parameter(name, nn.Parameter(torch.randn(size, generator=generator,
                                                                   dtype=torch.float64)))
        self.register_buffer("matrix", matrix)
        self.register_buffer("b", torch.randn(len(matrix), generator=generator, dtype=torch.float64))

    def theta(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.parameters()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta()
        return 0.5 * theta @ (self.matrix @ theta) + self.b @ theta + 0 * x.sum()


def engine_of(model: nn.Module) -> HVPEngine:
    batches = Batches([(torch.zeros(2, 1), torch.zeros(2))], [2])
    return HVPEngine(build_problem(model, lambda m, b: m(b[0]), batches, device=CPU, dtype=torch.float64))


def mapped(model: nn.Module, optimizer: torch.optim.Optimizer, folder) -> object:
    """The optimizer's state as the CLI reads it: saved, read, mapped to the model."""
    path = folder / "state.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    names = [n for n, _ in model.named_parameters()]
    return map_optimizer_state(read_optimizer_state(path), model, Match({}, ""), names)


def measured(model: nn.Module, state, *names: str, lr: float | None = None) -> dict:
    options = SharpnessOptions(measures=names, tol=1e-12, lr=lr)
    return sharpness(engine_of(model), options, optimizer=state).measures


def adam_with_state(model: nn.Module, groups: list[dict], v: dict[str, torch.Tensor], step: int,
                    cls=torch.optim.Adam, **settings) -> torch.optim.Optimizer:
    """``cls`` over ``groups`` of ``model``'s parameters, its state set to second moments ``v``,
    first moments m = 0.1·√v and step ``step`` (what ``load_state_dict`` accepts)."""
    params = dict(model.named_parameters())
    optimizer = cls([{**g, "params": [params[n] for n in g["params"]]} for g in groups], **settings)
    state = optimizer.state_dict()
    order = [n for g in groups for n in g["params"]]
    state["state"] = {i: {"step": torch.tensor(float(step)), "exp_avg": 0.1 * v[n].sqrt(),
                          "exp_avg_sq": v[n].clone(),
                          **({"max_exp_avg_sq": 2 * v[n]} if settings.get("amsgrad") else {})}
                      for i, n in enumerate(order)}
    optimizer.load_state_dict(state)
    return optimizer


def chosen_v() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    spread = {n: 10 ** torch.linspace(-4, 0, k, dtype=torch.float64) for n, k in SIZES.items()}
    return {n: torch.rand(k, generator=generator, dtype=torch.float64) * spread[n] for n, k in SIZES.items()}


# ----------------------------------------------------------------------------- dense checks


def test_one_group_of_adam_is_cohen_et_al_preconditioned_sharpness(tmp_path):
    """λ_max(P^-½ A P^-½), P = (1 − β₁ᵗ)(diag √v̂ + ε), v̂ = v/(1 − β₂ᵗ), to 1e-8."""
    matrix = symmetric_with_spectrum([5.0, 2.0, 1.0, 0.5, -0.3], seed=1)
    model = TwoParameterQuadratic(matrix)
    v, t, (beta1, beta2), eps, lr = chosen_v(), 7, (0.9, 0.999), 1e-3, 0.002
    optimizer = adam_with_state(model, [{"params": ["a", "c"]}], v, t, lr=lr, betas=(beta1, beta2), eps=eps)
    found = measured(model, mapped(model, optimizer, tmp_path), "stability_ratio", "gradient_curvature")

    p = (1 - beta1**t) * ((torch.cat([v["a"], v["c"]]) / (1 - beta2**t)).sqrt() + eps)
    expected = torch.linalg.eigvalsh(matrix / torch.outer(p.sqrt(), p.sqrt()))[-1].item()
    assert found["preconditioned_lambda_max"].value == pytest.approx(expected, rel=1e-8)
    assert found["stability_threshold"].value == pytest.approx(38 / lr, rel=1e-12)
    assert found["stability_ratio"].value == pytest.approx(expected * lr / 38, rel=1e-8)
    g = matrix @ model.theta().detach() + model.b
    assert found["gradient_curvature"].value == pytest.approx((g @ matrix @ g / (g @ g)).item(), rel=1e-10)


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_two_groups_fold_their_learning_rates_and_weight_decay(tmp_path, cls):
    """R = W^½(A + Λ_c)W^½ + ½EΛ_d, W = η_g/(c_g p), against the ratio; the threshold is the
    reference (largest) group's."""
    matrix = symmetric_with_spectrum([4.0, 3.0, 1.0, 0.2, 0.1], seed=2)
    model = TwoParameterQuadratic(matrix)
    v, t = chosen_v(), 50
    groups = [{"params": ["a"], "lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.3},
              {"params": ["c"], "lr": 0.004, "betas": (0.5, 0.99), "weight_decay": 2.0}]
    optimizer = adam_with_state(model, groups, v, t, cls, amsgrad=True, eps=1e-6)
    found = measured(model, mapped(model, optimizer, tmp_path), "stability_ratio")

    diagonal = []
    for group in groups:
        beta1, beta2 = group["betas"]
        for name in group["params"]:
            p = (1 - beta1**t) * ((2 * v[name] / (1 - beta2**t)).sqrt() + 1e-6)  # amsgrad: max v = 2v
            c = (2 + 2 * beta1) / (1 - beta1)
            diagonal.append((group["lr"] / (c * p), group["lr"], group["weight_decay"]))
    w = torch.cat([d[0] for d in diagonal])
    decay = torch.cat([torch.full_like(d[0], d[2]) for d in diagonal])
    eta = torch.cat([torch.full_like(d[0], d[1]) for d in diagonal])
    if cls is torch.optim.AdamW:
        r = w.sqrt()[:, None] * matrix * w.sqrt()[None, :] + torch.diag(eta * decay / 2)
    else:
        r = w.sqrt()[:, None] * (matrix + torch.diag(decay)) * w.sqrt()[None, :]
    assert found["stability_ratio"].value == pytest.approx(torch.linalg.eigvalsh(r)[-1].item(), rel=1e-8)
    assert found["stability_threshold"].value == pytest.approx(38 / 0.01, rel=1e-12)
    assert found["stability_ratio"].optimizer == cls.__name__


def test_update_curvature_follows_the_next_adam_step(tmp_path):
    """u = m̂/(√v̂ + ε) with the current gradient folded in (Adam's next step, times −1/η)."""
    matrix = symmetric_with_spectrum([3.0, 1.0, 0.4, 0.2, 0.1], seed=4)
    model = TwoParameterQuadratic(matrix)
    v, t, (beta1, beta2), eps = chosen_v(), 9, (0.8, 0.95), 1e-4
    optimizer = adam_with_state(model, [{"params": ["a", "c"]}], v, t, lr=0.01, betas=(beta1, beta2), eps=eps)
    found = measured(model, mapped(model, optimizer, tmp_path), "update_curvature")

    g = matrix @ model.theta().detach() + model.b
    v0 = torch.cat([v["a"], v["c"]])
    m = beta1 * 0.1 * v0.sqrt() + (1 - beta1) * g
    second = beta2 * v0 + (1 - beta2) * g**2
    u = (m / (1 - beta1 ** (t + 1))) / ((second / (1 - beta2 ** (t + 1))).sqrt() + eps)
    assert found["update_curvature"].value == pytest.approx((u @ matrix @ u / (u @ u)).item(), rel=1e-10)


# ----------------------------------------------------------------------------- torch.optim as the oracle


class Bowl(nn.Module):
    """½κ xᵀMx over scalar parameters x0, x1, ... (each its own tensor, so groups can differ)."""

    def __init__(self, matrix: torch.Tensor, kappa: float = 1.0):
        super().__init__()
        self.xs = nn.ParameterList([nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in matrix])
        self.register_buffer("matrix", kappa * matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = torch.cat(list(self.xs))
        return 0.5 * theta @ (self.matrix @ theta) + 0 * x.sum()


def warmed_up(model: Bowl, cls, groups: list[dict], settings: dict, scales: list[float]):
    """The optimizer after a long warm-up that freezes Adam's v: amsgrad's running maximum of
    v̂ reaches scale² (3000 steps of gradients ±scale, the bias corrections then 1), its first
    moment decays to nothing (300 steps without gradient); weight decay is off meanwhile and
    restored after. SGD needs none."""
    params = list(model.xs)
    optimizer = cls([{**g, "params": [params[i] for i in g["params"]]} for g in groups], **settings)
    if cls is torch.optim.SGD:
        return optimizer
    decays = [g["weight_decay"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["weight_decay"] = 0.0
    for step in range(3300):
        for p, scale in zip(params, scales):
            p.grad = torch.full_like(p, scale * (-1) ** step if step < 3000 else 0.0)
        optimizer.step()
    for g, decay in zip(optimizer.param_groups, decays):
        g["weight_decay"] = decay
    return optimizer


def outcome(model: Bowl, optimizer, kappa: float, steps: int = 4000) -> float:
    """|x| after ``steps`` of the real optimizer on ½κ xᵀMx from x = 1e-9·(1, 1, ...), in units
    of its start."""
    model, optimizer = copy.deepcopy((model, optimizer))
    params = list(model.xs)
    with torch.no_grad():
        for p in params:
            p.fill_(1e-9)
    matrix = kappa * model.matrix
    for _ in range(steps):
        theta = torch.cat([p.detach() for p in params])
        for p, g in zip(params, matrix @ theta):
            p.grad = g.reshape(1).clone()
        optimizer.step()
        if theta.abs().max() > 1e-5:  # diverged (before amsgrad's maximum could move)
            break
    return float(torch.cat([p.detach() for p in params]).abs().max() / 1e-9)


def edge(model: Bowl, state) -> float:
    """The κ at which the measured stability ratio is 1, by bisection on κ (the ratio grows
    with κ)."""
    def ratio(kappa: float) -> float:
        bowl = Bowl(model.matrix, kappa)
        return measured(bowl, state, "stability_ratio")["stability_ratio"].value

    low, high = 0.0, 1.0
    while ratio(high) < 1:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if ratio(middle) < 1 else (low, middle)
    return high


ONE = torch.ones(1, 1, dtype=torch.float64)
TWO = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
SGD, ADAM, ADAMW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
#: (name, optimizer, M, groups, settings, warm-up gradient scales)
SETTINGS = [
    ("sgd", SGD, ONE, [{"params": [0]}], {"lr": 0.1}, [1]),
    ("sgd-coupled-decay", SGD, ONE, [{"params": [0]}], {"lr": 0.05, "weight_decay": 8.0}, [1]),
    ("heavy-ball", SGD, ONE, [{"params": [0]}], {"lr": 0.1, "momentum": 0.9}, [1]),
    ("heavy-ball-dampened", SGD, ONE, [{"params": [0]}], {"lr": 0.3, "momentum": 0.5, "dampening": 0.3}, [1]),
    ("nesterov", SGD, ONE, [{"params": [0]}], {"lr": 0.1, "momentum": 0.9, "nesterov": True}, [1]),
    ("nesterov-decay", SGD, ONE, [{"params": [0]}],
     {"lr": 0.2, "momentum": 0.6, "nesterov": True, "weight_decay": 1.0}, [1]),
    ("sgd-two-groups", SGD, TWO,
     [{"params": [0], "lr": 0.1, "weight_decay": 3.0}, {"params": [1], "lr": 0.03}],
     {"lr": 0.1, "momentum": 0.9}, [1, 1]),
    ("adam", ADAM, ONE, [{"params": [0]}], {"lr": 0.01, "amsgrad": True, "betas": (0.9, 0.99)}, [0.01]),
    ("adam-coupled-decay", ADAM, ONE, [{"params": [0]}],
     {"lr": 0.05, "amsgrad": True, "betas": (0.5, 0.99), "eps": 1e-3, "weight_decay": 0.5}, [0.01]),
    ("adamw", ADAMW, ONE, [{"params": [0]}],
     {"lr": 0.01, "amsgrad": True, "betas": (0.9, 0.99), "weight_decay": 20.0}, [0.01]),
    ("adamw-two-groups", ADAMW, TWO,
     [{"params": [0], "weight_decay": 20.0}, {"params": [1], "lr": 0.004, "weight_decay": 0.0}],
     {"lr": 0.01, "amsgrad": True, "betas": (0.9, 0.99)}, [0.01, 0.03]),
]


@pytest.mark.parametrize(("name", "cls", "matrix", "groups", "settings", "scales"), SETTINGS,
                         ids=[s[0] for s in SETTINGS])
def test_torch_optim_converges_below_the_edge_and_diverges_above(tmp_path, name, cls, matrix, groups,
                                                                 settings, scales):
    model = Bowl(matrix)
    optimizer = warmed_up(model, cls, groups, settings, scales)
    kappa = edge(model, mapped(model, optimizer, tmp_path))
    assert outcome(model, optimizer, 0.95 * kappa) < 1, f"{name}: diverged below the edge"
    assert outcome(model, optimizer, 1.05 * kappa) > 1e3, f"{name}: did not diverge above the edge"


# ----------------------------------------------------------------------------- batch sharpness


def test_batch_sharpness_of_linear_regression_is_its_closed_form():
    """L_B = mean over B of (xᵀw − y)²: g_B = (2/|B|) X_Bᵀ(X_B w − y_B), H_B = (2/|B|) X_BᵀX_B,
    and batch_sharpness the mean over the fixed minibatches of g_BᵀH_B g_B/‖g_B‖²."""
    generator = torch.Generator().manual_seed(5)
    scales = torch.tensor([3.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    x = torch.randn(60, 4, generator=generator, dtype=torch.float64) * scales
    y = torch.randn(60, generator=generator, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=generator, dtype=torch.float64))
    chunks = list(zip(x.split(12), y.split(12)))
    batches = Batches([(xb, yb[:, None]) for xb, yb in chunks], [12] * 5)
    problem = build_problem(model, criterion_loss(nn.MSELoss()), batches, device=CPU, dtype=torch.float64)
    found = sharpness(HVPEngine(problem), SharpnessOptions(measures=("batch_sharpness",), lr=0.05)).measures

    w = model.weight.detach()[0]
    quotients = []
    for xb, yb in chunks:
        hessian = 2 / len(xb) * xb.T @ xb
        g = 2 / len(xb) * xb.T @ (xb @ w - yb)
        quotients.append((g @ hessian @ g / (g @ g)).item())
    q = torch.tensor(quotients, dtype=torch.float64)
    measure = found["batch_sharpness"]
    assert measure.value == pytest.approx(q.mean().item(), rel=1e-10)
    assert measure.stderr == pytest.approx((q.std() / math.sqrt(5)).item(), rel=1e-8)
    assert (measure.batches, measure.batch_size, measure.threshold) == (5, 12, pytest.approx(2 / 0.05))
    fd = HVPEngine(problem, strategy="fd")
    by_differences = sharpness(fd, SharpnessOptions(measures=("batch_sharpness",))).measures
    assert by_differences["batch_sharpness"].value == pytest.approx(q.mean().item(), rel=1e-7)
