"""Issue 32 §4: along a path or plane, the model's leading linear layer gives its output as the
weighted sum of its outputs at the ends (W(x, y)·X = W₀X + x·UX + y·VX). Found by torch.fx where
it is safe; the losses equal a direct forward pass at every point."""

from __future__ import annotations

import pytest
import torch
from helpers.samples import CNN_CKPT, MLP_CKPT, MODELS, digits, loaded
from torch import nn

from landscape_cli.engine.leading_layer import leading_layer, traced
from landscape_cli.engine.passes import MIXED_FAN_IN, Passes
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.loading.data import Batches
from landscape_cli.loading.factory import resolve

F64 = torch.float64


class Scaled(nn.Module):
    """The input is scaled by a parameter before the first Linear: no leading layer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x * self.scale)


class Twice(nn.Module):
    """The first Linear is called twice: its output is no function of the input alone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.fc(torch.tanh(self.fc(x))))


class Tied(nn.Module):
    """The first Linear's weight is also the last one's (transposed): tied weights."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(64, 16, bias=False)
        self.decode = nn.Linear(16, 64, bias=False)
        self.decode.weight = nn.Parameter(self.encode.weight.T.detach().clone())
        self.decode.weight = self.encode.weight  # type: ignore[assignment]
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.encode(x)))


class Branching(nn.Module):
    """Control flow on the data: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_the_leading_layer_is_found_through_shape_operations_and_nowhere_it_is_unsafe():
    make = {name: resolve(f"{MODELS}:{name}", "model.factory", "model") for name in
            ("make_mlp", "make_cnn", "make_char_transformer")}
    def found(model):
        return leading_layer(model, traced(model))

    mlp, cnn = found(make["make_mlp"]()), found(make["make_cnn"]())
    assert (mlp.path, mlp.parameters) == ("0", ("0.weight", "0.bias"))
    # the CNN reshapes its (N, 64) input to images first: a function of the input alone
    assert (cnn.path, cnn.parameters) == ("features.0.0", ("features.0.0.weight",))
    assert found(make["make_char_transformer"](20)) is None  # an Embedding first
    # weight normalisation makes the first Linear's weight g·v/‖v‖, not linear in (g, v); fx sees
    # the parametrized Linear as one layer, a subclass of nn.Linear
    normalised = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(64, 10)), nn.Tanh())
    for model in (Scaled(), Twice(), Branching(), Tied(), normalised):
        assert found(model) is None, type(model).__name__
    assert traced(Branching()) is None


def _plane(problem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixing weights of a 4×4 grid around θ₀ along two random directions, and the ends."""
    generator = torch.Generator().manual_seed(seed)
    ends = torch.stack([problem.theta0, *(0.3 * torch.randn(2, problem.n, generator=generator,
                                                            dtype=F64))])
    grid = torch.linspace(-1, 1, 4, dtype=F64)
    weights = torch.tensor([[1.0, x, y] for y in grid for x in grid], dtype=F64)
    return weights, ends


@pytest.mark.parametrize("config, checkpoint", [("mlp.yaml", MLP_CKPT), ("cnn_bn.yaml", CNN_CKPT)])
def test_a_plane_through_the_leading_layer_has_the_losses_of_a_direct_forward_pass(
        config, checkpoint, monkeypatch):
    problem = loaded(config, checkpoint).problem
    weights, ends = _plane(problem, seed=0)
    passes = Passes(problem)
    layer = passes._leading_layer()
    assert layer is not None
    groups = passes._forward_groups() or [(w, [i]) for i, w in enumerate(problem.weights)]
    kind, calls = type(layer.module), []
    computed = kind.forward
    monkeypatch.setattr(kind, "forward",
                        lambda self, x: calls.append(self is layer.module) or computed(self, x))
    mixed = passes.evaluate_many(weights @ ends, mixing=(weights, ends))
    monkeypatch.undo()
    # the layer computed its output once per end and group of batches (the outputs the rows
    # mix; and once in the pass that finds its input), not once per point, where that saves
    # work: the MLP's Linear has a fan-in of 64, the CNN's first convolution, from one channel,
    # 9 (a weighted sum of 3 outputs costs about as much: MIXED_FAN_IN)
    mixes = layer.fan_in >= MIXED_FAN_IN * len(ends)
    assert mixes == (config == "mlp.yaml")
    assert sum(calls) == (len(ends) + 1 if mixes else len(weights)) * len(groups)
    direct = Passes(problem).evaluate_many(weights @ ends)
    assert len({round(e.loss, 9) for e in direct}) == len(weights)  # distinct points
    for got, want in zip(mixed, direct):
        assert got.loss == pytest.approx(want.loss, rel=1e-12)
        assert got.accuracy == pytest.approx(want.accuracy, abs=1e-12)


def test_a_leading_layer_that_is_not_analysed_is_computed_as_before():
    """Under --params the leading layer's weights may be fixed: every row shares them, and a
    weighted sum of the ends' outputs would scale them by Σw; the pass computes them as before."""
    x, y = digits(200)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()),
                            Batches([(x[:128], y[:128]), (x[128:], y[128:])], [128, 72]),
                            params=["2.*"], device=torch.device("cpu"), dtype=F64)
    weights, ends = _plane(problem, seed=1)
    passes = Passes(problem)
    assert passes._leading_layer() is None
    mixed = passes.evaluate_many(weights @ ends, mixing=(weights, ends))
    direct = Passes(problem).evaluate_many(weights @ ends)
    assert [e.loss for e in mixed] == [e.loss for e in direct]


def test_a_loss_that_runs_the_model_twice_is_evaluated_directly():
    """A loss calling the model on two inputs (here the images and their mirror) calls the
    leading layer twice per pass: one mixed output cannot stand for both, so the points are
    computed as before, and the losses are a direct forward pass's."""
    x, y = digits(200)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()

    def two_views(m, batch):
        inputs, targets = batch
        return 0.5 * (nn.functional.cross_entropy(m(inputs), targets)
                      + nn.functional.cross_entropy(m(inputs.flip(1)), targets))

    problem = build_problem(model, two_views, Batches([(x[:128], y[:128]), (x[128:], y[128:])],
                                                      [128, 72]),
                            device=torch.device("cpu"), dtype=F64)
    weights, ends = _plane(problem, seed=2)
    passes = Passes(problem)
    assert passes._leading_layer() is not None  # the model has one; the loss decides
    mixed = passes.evaluate_many(weights @ ends, mixing=(weights, ends))
    direct = Passes(problem).evaluate_many(weights @ ends)
    assert [e.loss for e in mixed] == pytest.approx([e.loss for e in direct], rel=1e-12)
    assert len({round(e.loss, 9) for e in direct}) == len(weights)
