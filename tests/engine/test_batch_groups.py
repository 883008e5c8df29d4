"""The kept graph joins small batches into groups only where that leaves the loss unchanged:
exact against dense Hessians of the per-batch definition, and refused where it would not be."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from helpers.exact import dense_hessian
from helpers.samples import digits
from torch import nn

import landscape_cli.engine.plan as plan_module
from landscape_cli.data_batches import concat_batches, concatenates
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.loading.data import Batches

CPU, F64 = torch.device("cpu"), torch.float64
Pair = namedtuple("Pair", "x y")


def assert_exact(engine: HVPEngine, hessian: torch.Tensor) -> None:
    vectors = torch.randn(3, hessian.shape[0], dtype=F64, generator=torch.Generator().manual_seed(1))
    scale = float(hessian.abs().max()) * hessian.shape[0] ** 0.5
    assert float((engine.hvp(vectors) - vectors @ hessian).abs().max()) < 1e-10 * scale
    assert float((engine.hvp(vectors[0]) - hessian @ vectors[0]).abs().max()) < 1e-10 * scale


def assert_matches(reference, problem, strategy: str, groups: int) -> None:
    """The engine's H·v, groups and loss for a problem whose loss ``reference(θ)`` defines."""
    engine = HVPEngine(problem, strategy=strategy)
    assert_exact(engine, dense_hessian(reference, problem.theta0))
    assert engine.describe()["batch_groups"] == groups
    assert engine.loss() == pytest.approx(float(reference(problem.theta0)), rel=1e-12)


def test_concat_batches_joins_nested_batches_and_refuses_what_does_not_stack():
    a = {"x": torch.zeros(2, 3), "pair": (torch.zeros(2), Pair(torch.ones(2, 1), torch.arange(2)))}
    b = {"x": torch.ones(4, 3), "pair": (torch.ones(4), Pair(torch.ones(4, 1), torch.arange(4)))}
    joined = concat_batches([a, b])
    assert joined["x"].shape == (6, 3) and float(joined["x"].sum()) == 12
    assert isinstance(joined["pair"], tuple) and isinstance(joined["pair"][1], Pair)
    assert joined["pair"][1].y.tolist() == [0, 1, 0, 1, 2, 3]
    assert concatenates([a, b])
    refused = [[torch.zeros(2, 5), torch.zeros(2, 7)],  # sequence lengths differ
               [torch.zeros(2), torch.zeros(2, dtype=torch.int64)],
               [torch.tensor(1.0), torch.tensor(2.0)],  # no batch dimension
               [(torch.zeros(2), "a"), (torch.zeros(2), "a")],  # not a tensor
               [{"x": torch.zeros(1)}, {"y": torch.zeros(1)}],
               [(torch.zeros(1),), [torch.zeros(1)]]]
    for batches in refused:
        assert concat_batches(batches) is None and not concatenates(batches)


STRATEGIES = pytest.mark.parametrize("strategy", ["cached", "stream"])


@STRATEGIES
def test_small_batches_are_joined_and_the_hvp_stays_exact(mlp_exact, strategy):
    problem, hessian, _ = mlp_exact  # batches of 256, 256, 88
    engine = HVPEngine(problem, strategy=strategy)
    if strategy == "cached":
        # one gradient with its graph, and a pass over the first group that measures and checks it
        assert engine.cost.grads == 1 and engine.cost.data_passes == 2
    assert_exact(engine, hessian)
    assert engine.describe()["batch_groups"] == 1
    assert float((engine.grad() - problem_gradient(problem)).abs().max()) < 1e-12


def test_groups_hold_at_most_group_bytes_of_saved_tensors(mlp_exact, monkeypatch):
    """Bytes per sample are measured on the first batch (256 samples of 256, 256, 88)."""
    problem, hessian, _ = mlp_exact
    size = HVPEngine(problem, strategy="stream")._first_order_graph([(problem.weights[0], [0])], None).bytes
    monkeypatch.setattr(plan_module, "GROUP_BYTES", 2 * size + size // 4)  # 512 samples, not 600
    engine = HVPEngine(problem, strategy="cached")
    assert engine.describe()["batch_groups"] == 2  # [256 + 256], [88]
    assert_exact(engine, hessian)
    monkeypatch.setattr(plan_module, "GROUP_BYTES", size - 1)
    assert HVPEngine(problem, strategy="cached").describe()["batch_groups"] == 3


def problem_gradient(problem) -> torch.Tensor:
    """Σ_b w_b ∇L_b(θ₀), batch by batch, as the problem defines it."""
    theta = problem.theta0.detach().clone().requires_grad_(True)
    return torch.autograd.grad(sum(w * problem.mean_batch_loss(theta, problem.batch(i))
                                   for i, w in enumerate(problem.weights)), theta)[0]


def small_problem(loss_fn, batches: list, sizes: list[int]):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 10))
    return model, build_problem(model, loss_fn, Batches(batches, sizes), device=CPU, dtype=F64)


def centred(model, batch):
    """Cross-entropy of logits centred by their batch mean: a loss that depends on batching."""
    out = model(batch[0])
    return nn.functional.cross_entropy(out - out.mean(0), batch[1])


def centred_problem():
    x, y = digits(90)
    pieces = [(x[:40], y[:40]), (x[40:80], y[40:80]), (x[80:], y[80:])]
    return (*small_problem(centred, pieces, [40, 40, 10]), pieces)


@STRATEGIES
def test_a_loss_that_depends_on_the_batch_is_not_joined(strategy):
    """Joining the batches would change L(θ): the engine must keep the per-batch definition
    (checked against its dense Hessian)."""
    model, problem, pieces = centred_problem()

    def reference(theta):
        params = problem.unflatten(theta, prefix="")
        total = 0
        for xb, yb in pieces:
            out = torch.func.functional_call(model, params, (xb,))
            total = total + nn.functional.cross_entropy(out - out.mean(0), yb) * len(yb) / 90
        return total

    assert_matches(reference, problem, strategy, groups=3)


@STRATEGIES
def test_a_loss_that_counts_its_own_terms_is_joined_exactly(strategy):
    """loss.fn returning (mean over its unmasked targets, their count): the joined mean is the
    count-weighted mean of the batch means, so the groups join and H·v stays exact."""

    def masked(model, batch):
        x, y, keep = batch
        terms = nn.functional.cross_entropy(model(x), y, reduction="none")[keep]
        return terms.mean(), int(keep.sum())

    x, y = digits(90)
    keep = torch.arange(90) % 3 != 0
    keep[40:80] = True  # uneven counts per batch: 27, 40, 6 of 40, 40, 10
    pieces = [(x[a:b], y[a:b], keep[a:b]) for a, b in ((0, 40), (40, 80), (80, 90))]
    model, problem = small_problem(masked, pieces, [40, 40, 10])

    def reference(theta):
        out = torch.func.functional_call(model, problem.unflatten(theta, prefix=""), (x,))
        return nn.functional.cross_entropy(out[keep], y[keep])

    assert_matches(reference, problem, strategy, groups=1)


@STRATEGIES
def test_batches_that_do_not_stack_stay_separate_and_exact(strategy):
    """Sequences padded per batch (lengths 5 and 7) cannot be concatenated."""
    generator = torch.Generator().manual_seed(0)
    pieces = [(torch.randn(6, t, 64, generator=generator, dtype=F64),
               torch.randint(0, 10, (6,), generator=generator)) for t in (5, 7)]

    class MeanOverTime(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 10))

        def forward(self, x):
            return self.net(x).mean(1)

    torch.manual_seed(0)
    model = MeanOverTime()
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), Batches(pieces, [6, 6]),
                            device=CPU, dtype=F64)

    def reference(theta):
        params = problem.unflatten(theta, prefix="")
        return sum(nn.functional.cross_entropy(torch.func.functional_call(model, params, (xb,)), yb) / 2
                   for xb, yb in pieces)

    engine = HVPEngine(problem, strategy=strategy)
    assert_exact(engine, dense_hessian(reference, problem.theta0))
    assert engine.describe()["batch_groups"] == 2


@pytest.mark.parametrize("rows", [1, 2])
def test_batched_passes_take_at_most_the_rows_batched_bytes_allow(mlp_exact, monkeypatch, rows):
    problem, hessian, _ = mlp_exact
    group = HVPEngine(problem, strategy="cached").plan.cached_bytes  # one group: the joined batches
    monkeypatch.setattr(plan_module, "BATCHED_BYTES", rows * group + 1)
    engine = HVPEngine(problem, strategy="cached")
    real, batched_rows = engine._cached_backward, []

    def recorded(vectors, batched):
        if batched:
            batched_rows.append(len(vectors))
        return real(vectors, batched)

    monkeypatch.setattr(engine, "_cached_backward", recorded)
    for _ in range(3):
        assert_exact(engine, hessian)
    assert engine.describe()["cached_batched_rows"] == rows
    if rows == 1:  # nothing to batch: blocks loop, untimed
        assert batched_rows == [] and engine.describe()["cached_block_hvp"] == "looped"
    else:
        assert batched_rows and max(batched_rows) == 2


def test_joining_is_checked_before_any_graph_is_kept(monkeypatch):
    """A refused joined graph alive beside the per-batch one would double the memory the budget
    was checked against: the check runs first, and one graph, per batch, is built."""
    _, problem, _ = centred_problem()
    built = []
    real = HVPEngine._first_order_graph

    def recorded(self, groups, budget):
        built.append([indices for _, indices in groups])
        return real(self, groups, budget)

    monkeypatch.setattr(HVPEngine, "_first_order_graph", recorded)
    engine = HVPEngine(problem, strategy="cached")
    assert built == [[[0], [1], [2]]] and engine.describe()["batch_groups"] == 3


def test_streamed_vmap_takes_at_most_the_rows_batched_bytes_allow_per_joined_group(mlp_exact, monkeypatch):
    """vmap holds a group's activations per row: joined groups cap the rows per vmapped pass."""
    problem, hessian, _ = mlp_exact
    group = HVPEngine(problem, strategy="cached").plan.cached_bytes  # one group: the joined batches
    monkeypatch.setattr(plan_module, "BATCHED_BYTES", 2 * group + group // 2)
    engine = HVPEngine(problem, strategy="stream")
    real, rows = engine._forward_over_reverse, []
    monkeypatch.setattr(engine, "_forward_over_reverse",
                        lambda theta, block, batch: rows.append(len(block)) or real(theta, block, batch))
    vectors = torch.randn(5, problem.n, dtype=F64, generator=torch.Generator().manual_seed(3))
    scale = float(hessian.abs().max()) * problem.n ** 0.5
    assert float((engine.hvp(vectors) - vectors @ hessian).abs().max()) < 1e-10 * scale
    assert rows == [2, 2, 1] and engine.describe()["hvp_chunk"] == 2


def test_groups_take_at_most_a_quarter_of_the_memory_budget(mlp_exact):
    """A small budget bounds the groups (stream memory stays near one batch's), and a budget of
    0 (always stream, nothing kept) keeps the batches."""
    problem, hessian, _ = mlp_exact  # batches of 256, 256, 88
    size = HVPEngine(problem, strategy="stream")._first_order_graph([(problem.weights[0], [0])], None).bytes
    engine = HVPEngine(problem, strategy="stream", memory_budget=4 * (2 * size + size // 4))
    assert_exact(engine, hessian)
    assert engine.describe()["batch_groups"] == 2  # [256 + 256], [88]
    engine = HVPEngine(problem, strategy="stream", memory_budget=0)
    assert_exact(engine, hessian)
    assert engine.describe()["batch_groups"] == 3 and engine.cost.data_passes == 2  # two HVPs, no check
