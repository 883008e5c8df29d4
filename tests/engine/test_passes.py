"""Issue 18: ``Passes`` (evaluation, gradient, vmapped evaluation, BatchNorm recalibration)
against float64 references computed here, independently of the engine."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers.samples import CNN_CKPT, MLP_CKPT, digits, loaded
from torch import nn

from landscape_cli.engine.passes import Passes, SavedBytes, spanned_bytes
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.loading.data import Batches

F64 = torch.float64
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# (config, checkpoint, overrides, expected batch sizes: the last one short)
SAMPLES = {
    "mlp": ("mlp.yaml", MLP_CKPT, ("data.max_samples=300", "data.batch_size=128"), [128, 128, 44]),
    "cnn_bn": ("cnn_bn.yaml", CNN_CKPT, ("data.max_samples=300", "data.batch_size=64"),
               [64, 64, 64, 64, 44]),
}
BOTH = pytest.mark.parametrize("sample", list(SAMPLES))


def sample_problem(sample: str):
    config, ckpt, overrides, sizes = SAMPLES[sample]
    problem = loaded(config, ckpt, *overrides).problem
    assert [len(b[1]) for b in problem.batches] == sizes  # an uneven last batch
    assert problem.n_samples == sum(sizes) and sizes[-1] < sizes[0]
    return problem, sizes


def random_theta(problem, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return problem.theta0 + scale * torch.randn(problem.n, dtype=F64, generator=generator)


def pieces(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first sum(sizes) digits, cut into batches of ``sizes`` (independent of the loader)."""
    x, y = digits(sum(sizes))
    return list(zip(x.split(sizes), y.split(sizes)))


def reference_loss(model: nn.Module, params, batches) -> tuple[torch.Tensor, float]:
    """Σ_b Σ_i CE_i / N (a graph to ``params`` kept) and the top-1 accuracy, batch by batch."""
    total, correct, count = 0, 0, 0
    for xb, yb in batches:
        out = model(xb) if params is None else torch.func.functional_call(model, params, (xb,))
        total = total + nn.functional.cross_entropy(out, yb, reduction="sum")
        correct += int((out.argmax(dim=1) == yb).sum())
        count += len(yb)
    return total / count, correct / count


def assert_close_gradient(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.norm())
    assert scale > 0
    error = float((got - expected).abs().max())
    assert error <= 1e-10 * scale, f"gradient error {error:.3e} vs norm {scale:.3e}"


# ----------------------------------------------------------------------------- 1. exactness


@BOTH
def test_evaluate_and_value_and_grad_equal_a_float64_reference_away_from_theta0(sample):
    problem, sizes = sample_problem(sample)
    model = copy.deepcopy(problem.objective.model)  # the reference's own copy, in eval mode
    assert not model.training
    theta = random_theta(problem, seed=1)
    assert float((theta - problem.theta0).abs().max()) > 0

    leaf = theta.clone().requires_grad_(True)
    exact_loss, exact_accuracy = reference_loss(model, problem.unflatten(leaf, prefix=""), pieces(sizes))
    exact_grad = torch.autograd.grad(exact_loss, leaf)[0]
    exact_value = float(exact_loss.detach())

    passes = Passes(problem)
    ev = passes.evaluate(theta)
    assert isinstance(ev.loss, float)
    assert abs(ev.loss - exact_value) <= 1e-10, (ev.loss, exact_value)
    assert ev.accuracy is not None and abs(ev.accuracy - exact_accuracy) <= 1e-10

    loss, grad = passes.value_and_grad(theta)
    assert isinstance(loss, float) and abs(loss - exact_value) <= 1e-10, (loss, exact_value)
    assert grad.shape == theta.shape and grad.dtype == theta.dtype
    assert not grad.requires_grad and grad.grad_fn is None  # no graph kept
    assert_close_gradient(grad, exact_grad)

    # θ = None is the checkpoint's θ₀, and θ₀ is not the random point above
    at_theta0, _ = reference_loss(model, problem.unflatten(problem.theta0, prefix=""), pieces(sizes))
    default = passes.evaluate()
    assert abs(default.loss - float(at_theta0)) <= 1e-10
    assert abs(default.loss - ev.loss) > 1e-6


# ----------------------------------------------------------------------------- 2. forward count


@BOTH
def test_accuracy_costs_no_extra_forward(sample):
    problem, sizes = sample_problem(sample)
    passes = Passes(problem)
    calls = []
    handle = problem.objective.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ev = passes.evaluate(random_theta(problem, seed=2))
    finally:
        handle.remove()
    assert ev.accuracy is not None
    assert len(calls) == len(sizes), f"{len(calls)} forwards for {len(sizes)} batches"
    assert passes.data_passes == 1  # a fresh Passes, one evaluation: one pass over the data


# ----------------------------------------------------------------------------- 3. evaluate_many


#: how a warning may say that the rows went one at a time instead of through vmap
FALLBACK = re.compile(r"fall(s|ing)?[ -]?back|fell back|one at a time|\bloop", re.IGNORECASE)


def assert_many_equals_loop(passes: Passes, thetas: torch.Tensor) -> None:
    many = passes.evaluate_many(thetas)
    assert len(many) == len(thetas)
    for theta, got in zip(thetas, many):
        one = passes.evaluate(theta)
        assert abs(got.loss - one.loss) <= 1e-12, (got.loss, one.loss)
        assert (got.accuracy is None) == (one.accuracy is None)
        if one.accuracy is not None:
            assert abs(got.accuracy - one.accuracy) <= 1e-12, (got.accuracy, one.accuracy)


@BOTH
def test_evaluate_many_equals_one_evaluate_per_theta(sample):
    problem, sizes = sample_problem(sample)
    thetas = torch.stack([random_theta(problem, seed=10 + i) for i in range(7)])
    passes = Passes(problem)
    calls = []
    handle = problem.objective.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        many = passes.evaluate_many(thetas)
    finally:
        handle.remove()
    assert len(many) == 7 and len({round(e.loss, 12) for e in many}) == 7  # 7 distinct points
    assert len(calls) < 7 * len(sizes)  # vmapped over θ, not a loop of 7 evaluations
    assert not passes.warnings, passes.warnings  # vmap ran: nothing fell back
    assert_many_equals_loop(passes, thetas)
    assert not passes.warnings, passes.warnings


class Branchy(nn.Module):
    """Data-dependent Python control flow on an activation: vmap over θ cannot run it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(64, 6), nn.Linear(6, 10)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        if self.how == "item":
            return self.fc2(h * (1.0 + h.abs().mean().item()))
        if h.sum() > 0:
            return self.fc2(h)
        return self.fc2(2 * h)


@pytest.mark.parametrize("how", ["if", "item"])
def test_evaluate_many_falls_back_to_a_loop_where_vmap_cannot_run(how):
    torch.manual_seed(0)
    sizes = [64, 64, 22]
    problem = build_problem(Branchy(how).double(), criterion_loss(nn.CrossEntropyLoss()),
                            Batches(pieces(sizes), sizes), device=torch.device("cpu"), dtype=F64)
    generator = torch.Generator().manual_seed(3)
    thetas = problem.theta0 + 0.5 * torch.randn(7, problem.n, dtype=F64, generator=generator)
    passes = Passes(problem)
    assert not passes.warnings
    assert_many_equals_loop(passes, thetas)
    assert passes.warnings and any(FALLBACK.search(w) for w in passes.warnings), passes.warnings
    # and the numbers are the model's own, computed here
    with torch.no_grad():
        for theta, got in zip(thetas, passes.evaluate_many(thetas)):
            loss, accuracy = reference_loss(problem.objective.model,
                                            problem.unflatten(theta, prefix=""), pieces(sizes))
            assert abs(got.loss - float(loss)) <= 1e-10 and abs(got.accuracy - accuracy) <= 1e-10


# ----------------------------------------------------------------------------- 4. recalibrate_bn


def recalibrated_reference(problem, theta: torch.Tensor, batches) -> nn.Module:
    """A copy of the model at θ whose BatchNorms accumulated exact cumulative averages
    (momentum=None) over ``batches`` in order, everything else in eval mode."""
    model = copy.deepcopy(problem.objective.model)
    model.eval()
    with torch.no_grad():
        named = dict(model.named_parameters())
        for name, value in problem.unflatten(theta, prefix="").items():
            named[name].copy_(value)
        for module in model.modules():
            if isinstance(module, BN_TYPES):
                module.reset_running_stats()
                module.momentum = None
                module.train()
        for xb, _ in batches:
            model(xb)
    model.eval()
    return model


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, BN_TYPES):
            for name, value in module.named_buffers(prefix=prefix):
                found[name] = value
    return found


def buffers_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_buffers()}


def assert_recalibration_matches(problem, sizes, theta) -> nn.Module:
    model = problem.objective.model
    before = buffers_of(model)
    modes = [m.training for m in model.modules()]
    momenta = [m.momentum for m in model.modules() if isinstance(m, BN_TYPES)]
    reference = recalibrated_reference(problem, theta, pieces(sizes))
    expected = bn_buffers(reference)
    assert expected  # the model has BatchNorm

    passes = Passes(problem)
    got = passes.recalibrate_bn(theta)
    assert set(got) == set(expected)
    for name, value in expected.items():
        if name.endswith("num_batches_tracked"):
            assert int(got[name]) == int(value) == len(sizes), name
            continue
        error = float((got[name].to(F64) - value).abs().max())
        assert error <= 1e-6 * max(1.0, float(value.abs().max())), (name, error)
        # the checkpoint's statistics were really replaced
        assert float((value - before[name]).abs().max()) > 1e-3, name

    # the problem's model is untouched: buffers bitwise, modes, momenta
    after = buffers_of(model)
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(after[name], before[name]), name
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in model.modules() if isinstance(m, BN_TYPES)] == momenta

    # evaluation with the recalibrated buffers is the recalibrated copy's, in eval mode
    with torch.no_grad():
        exact_loss, exact_accuracy = reference_loss(reference, None, pieces(sizes))
    ev = passes.evaluate(theta, buffers=got)
    assert abs(ev.loss - float(exact_loss)) <= 1e-10, (ev.loss, float(exact_loss))
    assert abs(ev.accuracy - exact_accuracy) <= 1e-10
    assert abs(passes.evaluate(theta).loss - ev.loss) > 1e-8  # the buffers were used
    assert passes.data_passes == 3  # one pass to recalibrate, one per evaluation
    return reference


def test_recalibrate_bn_is_the_exact_cumulative_average_on_the_sample_cnn():
    problem, sizes = sample_problem("cnn_bn")
    assert_recalibration_matches(problem, sizes, random_theta(problem, seed=4))


class DropBN(nn.Module):
    """BatchNorm between dropouts: recalibration must keep dropout off."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(64, 6), nn.BatchNorm1d(6, momentum=0.3), nn.Linear(6, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(self.drop(x))))))


def test_recalibrate_bn_keeps_dropout_off_and_ignores_the_model_momentum():
    torch.manual_seed(0)
    model = DropBN().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    sizes = [40, 40, 40, 13]
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), Batches(pieces(sizes), sizes),
                            device=torch.device("cpu"), dtype=F64)
    assert_recalibration_matches(problem, sizes, random_theta(problem, seed=5, scale=0.2))


def test_recalibrate_bn_without_batchnorm_is_empty():
    problem, _ = sample_problem("mlp")
    before = buffers_of(problem.objective.model)
    passes = Passes(problem)
    assert passes.recalibrate_bn(random_theta(problem)) == {}
    assert passes.recalibrate_bn() == {}
    assert buffers_of(problem.objective.model).keys() == before.keys()


def test_loss_at_theta0_has_one_home_the_first_pass_that_computed_it():
    """Issue 26: L(θ₀) comes from the first pass at θ₀ that computed it (here a gradient
    pass); the accuracy from one evaluation, run once however often it is asked for."""
    problem, sizes = sample_problem("mlp")
    passes = Passes(problem)
    loss, _ = passes.value_and_grad()
    evaluated = passes.at_theta0()
    assert evaluated.loss == loss  # the gradient pass's own number, not a second one
    x, y = digits(sum(sizes))
    with torch.no_grad():
        model = copy.deepcopy(problem.objective.model).double()
        logits = model(x.double())
    exact = float(nn.functional.cross_entropy(logits, y))
    assert evaluated.loss == pytest.approx(exact, rel=1e-5)
    assert evaluated.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    forwards = passes.cost.forwards
    assert passes.evaluate() == passes.at_theta0() == evaluated and passes.cost.forwards == forwards
    # a known evaluation (the load's) is the home where no pass ran yet
    fresh = Passes(problem)
    known = type(evaluated)(1.5, 0.25)
    assert fresh.at_theta0(known) == known and fresh.cost.forwards == 0


@BOTH
def test_passes_over_many_theta_join_batches_where_the_loss_is_their_weighted_sum(sample):
    """Issue 32 §4: fewer, larger forward passes (the per-operator cost paid once per group), the
    same numbers; never where the loss could depend on the batching."""
    problem, sizes = sample_problem(sample)
    passes = Passes(problem)
    groups = passes._forward_groups()
    assert groups is not None and len(groups) < len(sizes)
    assert [i for _, run in groups for i in run] == list(range(len(sizes)))  # in order, each once
    assert sum(w for w, _ in groups) == pytest.approx(1.0, rel=1e-12)
    thetas = torch.stack([random_theta(problem, seed=20 + i) for i in range(3)])
    assert_many_equals_loop(passes, thetas)
    branchy = build_problem(Branchy("if").double(), criterion_loss(nn.CrossEntropyLoss()),
                            Batches(pieces([64, 64, 22]), [64, 64, 22]), device=torch.device("cpu"),
                            dtype=F64)
    assert Passes(branchy)._forward_groups() is None  # control flow on the data: no static graph
    if sample == "cnn_bn":
        stats = loaded(*SAMPLES[sample][:2], *SAMPLES[sample][2], "bn=train-stats").problem
        assert Passes(stats)._forward_groups() is None  # batch statistics: joining changes L


def test_saved_bytes_count_what_the_pass_keeps_not_the_storages_it_reads():
    """A batch sliced from the dataset counts its rows (the plan of passes over many θ had
    counted the whole dataset for each batch), an expanded tensor the storage it reads, a
    tensor saved twice once."""
    dataset = torch.zeros(1000, 64, dtype=F64)
    batch = dataset[200:456]
    assert spanned_bytes(batch) == 256 * 64 * 8
    assert spanned_bytes(dataset[:, 3]) == (999 * 64 + 1) * 8  # a column spans the rows between
    assert spanned_bytes(torch.zeros(1, 32).expand(500, 32)) == 32 * 4
    assert spanned_bytes(torch.zeros(0, 5)) == 0
    weight = torch.ones(64, 10, dtype=F64, requires_grad=True)
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        out = batch @ weight
        (out * out).sum()
    # batch @ weight keeps the batch (for the weight's gradient), out * out keeps out (once)
    assert saved.bytes == 256 * 64 * 8 + 256 * 10 * 8
