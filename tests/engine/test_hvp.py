"""The HVP engine and spectrum against exact dense Hessians (torch.func.hessian, float64)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers.exact import dense_hessian, full_batch_loss, relative_error
from helpers.samples import CNN_CKPT, CONFIGS, MLP_CKPT, digits, loaded
from torch import nn

from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.config import load_config
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.plan import batches_rows
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.operator import DenseOperator
from landscape_cli.loading.assemble import build_model
from landscape_cli.loading.data import Batches


@pytest.mark.parametrize("strategy", ["cached", "stream"])
def test_hvp_block_equals_dense_hessian(mlp_exact, strategy):
    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, strategy=strategy)
    vectors = torch.randn(3, problem.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    block = engine.hvp(vectors)
    single = engine.hvp(vectors[0])
    scale = float(hessian.abs().max())
    assert float((block - vectors @ hessian).abs().max()) < 1e-10 * scale * problem.n ** 0.5
    assert torch.allclose(single, block[0], rtol=1e-10, atol=1e-14)
    assert engine.cost.hvps == 4 and engine.cost.hvp_blocks == 2
    assert engine.mode == strategy
    if strategy == "stream":  # one vector: the faster of two exact ways, timed on first use
        assert engine.describe()["single_vector_hvp"] in ("forward-over-reverse", "double backward")


def three_blocks_are_exact(engine, hessian, rows):
    scale = float(hessian.abs().max()) * hessian.shape[0] ** 0.5
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        vectors = torch.randn(rows, hessian.shape[0], dtype=torch.float64, generator=generator)
        assert float((engine.hvp(vectors) - vectors @ hessian).abs().max()) < 1e-10 * scale


@pytest.mark.parametrize("slow", [True, False])
def test_streamed_blocks_go_the_way_the_rule_says_and_stay_exact(mlp_exact, monkeypatch, slow):
    """Issue 16: which way a block goes is a rule on the measured saved-tensor bytes
    (``batches_rows``), never a timing: making either way slow changes nothing."""
    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, strategy="stream")
    slower = "_in_chunks" if slow else "_double_backward"
    real = getattr(engine, slower)

    def delayed(*args):
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(engine, slower, delayed)
    three_blocks_are_exact(engine, hessian, rows=3)
    ruled = batches_rows(problem.device, engine.plan.group_bytes)
    assert engine.describe()["stream_block_hvp"] == (
        "vmapped forward-over-reverse" if ruled else "double backward")
    # three blocks over the joined batches, and the pass over the first group that checked them
    assert engine.describe()["batch_groups"] == 1
    assert engine.cost.hvps == 9 and engine.cost.data_passes == 4


@pytest.mark.parametrize("slow", [True, False])
def test_cached_blocks_go_the_way_the_rule_says_and_stay_exact(mlp_exact, monkeypatch, slow):
    """Batched or looped backward passes through the kept graph, by the rule, whatever the
    clock says; the MLP's small groups go batched."""
    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, strategy="cached")
    real = engine._cached_backward

    def timed_backward(vectors, batched):
        if batched == slow:  # make one way clearly slower
            time.sleep(0.1 * (len(vectors) if batched else 1))
        return real(vectors, batched)

    monkeypatch.setattr(engine, "_cached_backward", timed_backward)
    three_blocks_are_exact(engine, hessian, rows=4)
    assert engine.describe()["cached_block_hvp"] == "batched"
    assert engine.cost.hvps == 12 and engine.cost.hvp_blocks == 3


def test_loss_and_gradient_are_the_sample_weighted_dataset_mean(mlp_exact):
    problem, _, reference = mlp_exact
    assert [len(b[1]) for b in problem.batches] == [256, 256, 88]  # uneven last batch
    engine = HVPEngine(problem)
    theta = problem.theta0.clone().requires_grad_(True)
    exact_loss = reference(theta)
    exact_value = float(exact_loss.detach())
    exact_grad = torch.autograd.grad(exact_loss, theta)[0]
    assert engine.loss() == pytest.approx(exact_value, rel=1e-12)
    assert torch.allclose(engine.grad(), exact_grad, rtol=1e-9, atol=1e-14)


def test_mlp_top5_and_bottom5_match_dense_eigvalsh(mlp_exact):
    problem, hessian, _ = mlp_exact
    exact = torch.linalg.eigvalsh(hessian)
    result = spectrum(HVPEngine(problem), top=5, bottom=5, tol=1e-8, seed=0)
    assert relative_error(result.top_eigenvalues, exact[-5:].flip(0)) < 1e-4
    # the bottom of a trained net's spectrum is a cluster at 0: compare absolutely
    assert np.allclose(result.bottom_eigenvalues, exact[:5].numpy(), atol=1e-4 * float(exact[-1]))
    assert all(result.top_converged)


def test_batchnorm_eval_with_uneven_batches_matches_dense_hessian(tmp_path):
    # the sample BatchNorm CNN at 2 channels (170 parameters), with non-trivial running
    # statistics, on 100 digits in batches of 32: 32, 32, 32, 4
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / "cnn_bn.yaml", ["model.kwargs.channels=2"]))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "cnn2.pt"
    torch.save({"epoch": 1, "model_state_dict": model.state_dict()}, path)
    run = loaded("cnn_bn.yaml", path, "model.kwargs.channels=2", "data.max_samples=100",
                 "data.batch_size=32")
    problem = run.problem
    assert [len(b[1]) for b in problem.batches] == [32, 32, 32, 4]
    x, y = digits(100)
    hessian = dense_hessian(full_batch_loss(problem.objective.model, problem, x, y), problem.theta0)
    exact = torch.linalg.eigvalsh(hessian)
    engine = HVPEngine(problem)
    result = spectrum(engine, top=5, bottom=5, tol=1e-9, seed=1)
    assert relative_error(result.top_eigenvalues, exact[-5:].flip(0)) < 1e-6
    assert np.allclose(result.bottom_eigenvalues, exact[:5].numpy(), atol=1e-6 * float(exact[-1]))
    vectors = torch.randn(2, problem.n, dtype=torch.float64)
    assert torch.allclose(engine.hvp(vectors), vectors @ hessian, rtol=1e-8, atol=1e-10)


def test_sample_cnn_hvp_equals_reference_hvp():
    # the shipped BatchNorm CNN, full size: compare H·v with torch.autograd.functional.hvp
    # on the full-batch mean loss (one pass, no batching or weights)
    run = loaded("cnn_bn.yaml", CNN_CKPT, "data.max_samples=300", "data.batch_size=64")
    problem = run.problem
    x, y = digits(300)
    reference = full_batch_loss(problem.objective.model, problem, x, y)
    vector = torch.randn(problem.n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, expected = torch.autograd.functional.hvp(reference, problem.theta0, vector)
    for strategy in ("cached", "stream"):
        got = HVPEngine(problem, strategy=strategy).hvp(vector)
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(64, 6), nn.BatchNorm1d(6), nn.Linear(6, 10)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def test_train_stats_policy_uses_batch_statistics_and_keeps_buffers():
    torch.manual_seed(0)
    x, y = digits(90)
    model = TinyBN().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    reference_model = TinyBN().double()
    reference_model.load_state_dict(model.state_dict())
    before = model.bn.running_mean.clone()
    sizes = [40, 40, 10]
    batches = Batches([(x[:40], y[:40]), (x[40:80], y[40:80]), (x[80:], y[80:])], sizes)
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), batches, bn="train-stats",
                            device=torch.device("cpu"), dtype=torch.float64)
    reference_model.train()  # batch statistics, per batch, weighted by batch size

    def reference(theta):
        params = problem.unflatten(theta, prefix="")
        total = 0
        for (xb, yb), n in zip(batches.batches, sizes):
            out = torch.func.functional_call(reference_model, params, (xb,))
            total = total + nn.functional.cross_entropy(out, yb) * n / 90
        return total

    hessian = torch.autograd.functional.hessian(reference, problem.theta0)
    engine = HVPEngine(problem)
    assert engine.describe()["batch_groups"] == 3  # batch statistics: never joined
    vectors = torch.randn(2, problem.n, dtype=torch.float64)
    assert torch.allclose(engine.hvp(vectors), vectors @ hessian, rtol=1e-8, atol=1e-10)
    assert engine.loss() == pytest.approx(float(reference(problem.theta0)), rel=1e-12)
    assert not torch.equal(before, reference_model.bn.running_mean)  # the reference updated its own
    # the analysed model uses batch statistics and keeps no running buffers to update
    assert model.bn.running_mean is None and not model.bn.track_running_stats


def test_parameter_subset_is_the_dense_sub_block(mlp_exact):
    problem, hessian, _ = mlp_exact
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600", params=["2.*"])
    sub = run.problem
    assert sub.names == ["2.weight", "2.bias"]
    index = torch.cat([torch.arange(problem.groups[n].start, problem.groups[n].stop)
                       for n in sub.names])
    block = hessian[index][:, index]
    vectors = torch.randn(2, sub.n, dtype=torch.float64)
    assert torch.allclose(HVPEngine(sub).hvp(vectors), vectors @ block, rtol=1e-9, atol=1e-12)


def test_no_parameter_selected_is_bad_input():
    with pytest.raises(LandscapeError, match="no parameter selected"):
        loaded("mlp.yaml", MLP_CKPT, "data.max_samples=10", params=["nothing.*"])


class OldStyleSquare(torch.autograd.Function):
    """A custom autograd.Function that torch.func cannot transform (no setup_context) and
    whose backward reads a value (.item()), which vmap over the backward cannot do."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        scale = 2.0 if grad.abs().sum().item() >= 0 else 0.0
        return scale * x * grad


class Unvmappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return OldStyleSquare.apply(self.fc(x))


@pytest.mark.parametrize("strategy", ["cached", "stream", "compile"])
def test_model_vmap_cannot_handle_falls_back_and_stays_exact(strategy):
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    model = Unvmappable().double()
    batches = Batches([(x[:16], y[:16]), (x[16:], y[16:])], [16, 14])
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), batches,
                            device=torch.device("cpu"), dtype=torch.float64)
    reference_model = Unvmappable().double()
    reference_model.load_state_dict(model.state_dict())

    def reference(theta):
        out = torch.func.functional_call(reference_model, problem.unflatten(theta, prefix=""), (x,))
        return nn.functional.cross_entropy(out, y)

    hessian = torch.autograd.functional.hessian(reference, problem.theta0)
    engine = (HVPEngine(problem, compile=True) if strategy == "compile"
              else HVPEngine(problem, strategy=strategy))
    vectors = torch.randn(3, problem.n, dtype=torch.float64)
    assert torch.allclose(engine.hvp(vectors), vectors @ hessian, rtol=1e-9, atol=1e-12)
    assert any("fell back" in w for w in engine.warnings)
    assert (strategy == "compile") == any("torch.compile failed" in w for w in engine.warnings)


@pytest.mark.parametrize("algorithm", ["lanczos", "hutchpp", "slq"])
def test_non_finite_hvp_stops_every_algorithm(algorithm):
    from helpers.quadratic import make_kink

    from landscape_cli.linalg.lanczos import lanczos
    from landscape_cli.linalg.slq import slq
    from landscape_cli.linalg.trace import hutchpp

    batches = Batches([(torch.zeros(2, 1), torch.zeros(2))], [2])
    problem = build_problem(make_kink(), lambda m, b: m(b[0]), batches, device=torch.device("cpu"),
                            dtype=torch.float64)
    engine = HVPEngine(problem)
    assert not torch.isfinite(engine.hvp(torch.ones(3, dtype=torch.float64))).all()
    run = {"lanczos": lambda: lanczos(engine, top=2),
           "hutchpp": lambda: hutchpp(engine, max_matvecs=30,
                                       generator=torch.Generator().manual_seed(0)),
           "slq": lambda: slq(engine, runs=2, steps=3)}[algorithm]
    with pytest.raises(FloatingPointError):
        run()


def test_memory_budget_too_small_streams_instead():
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=300")
    engine = HVPEngine(run.problem, memory_budget=1000)
    assert engine.mode == "stream"
    cached = HVPEngine(run.problem)
    v = torch.randn(2, run.problem.n, dtype=torch.float64)
    assert torch.allclose(engine.hvp(v), cached.hvp(v), rtol=1e-10, atol=1e-14)


def test_auto_keeps_a_graph_within_half_the_budget_and_counts_what_a_stream_holds():
    """One batch whose first-order graph saves B bytes: a budget of 3·B keeps it and leaves the
    rest to the algorithms; under 1.5·B the graph would take more than half, so the products
    stream, and the group graph a streamed product builds (at least the 0.75·B it had saved
    when it outgrew its half) is not left to the algorithms either."""
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=300", "data.batch_size=300")
    graph = HVPEngine(run.problem, strategy="cached").plan.cached_bytes
    kept = HVPEngine(run.problem, memory_budget=3 * graph)
    assert kept.mode == "cached" and kept.memory_left() == 3 * graph - graph
    streamed = HVPEngine(run.problem, memory_budget=int(1.5 * graph))
    assert streamed.mode == "stream"
    assert 0.75 * graph <= int(1.5 * graph) - streamed.memory_left() <= graph


def test_compiled_stream_hvp_equals_dense_hessian_and_compiles_once_per_batch_shape(mlp_exact):
    from torch._dynamo.utils import counters

    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, compile=True)
    generator = torch.Generator().manual_seed(1)
    scale = float(hessian.abs().max())
    graphs = []
    for rows in (3, 11):  # padded to one chunk of 8, then split into two: the same compiled shape
        vectors = torch.randn(rows, problem.n, dtype=torch.float64, generator=generator)
        error = float((engine.hvp(vectors) - vectors @ hessian).abs().max())
        assert error < 1e-10 * scale * problem.n ** 0.5
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0]  # a new block size compiled nothing new
    assert engine.mode == "stream" and engine.describe()["compiled"] and not engine.warnings


def test_each_compiled_engine_compiles_its_own_graphs():
    """Dynamo's recompilation limit is per code object; engines one after another in a process
    (a sweep over checkpoints) must not run out of it and fall back to eager without a word."""
    from torch._dynamo.utils import counters

    graphs = []
    with torch._dynamo.config.patch(recompile_limit=2):
        for width in (3, 4, 5):
            torch.manual_seed(width)
            x, y = torch.randn(12, width, dtype=torch.float64), torch.randint(0, 2, (12,))
            problem = build_problem(nn.Linear(width, 2).double(), criterion_loss(nn.CrossEntropyLoss()),
                                    Batches([(x, y)], [12]), device=torch.device("cpu"),
                                    dtype=torch.float64)
            engine = HVPEngine(problem, compile=True)
            before = counters["stats"]["unique_graphs"]
            engine.hvp(torch.randn(3, problem.n, dtype=torch.float64))
            graphs.append(counters["stats"]["unique_graphs"] - before)
            assert not engine.warnings
    assert graphs == [1, 1, 1]


def test_memory_budget_zero_never_builds_the_graph(mlp_exact):
    problem, _, _ = mlp_exact
    engine = HVPEngine(problem, memory_budget=0)
    assert engine.mode == "stream" and engine.cost.data_passes == 0


def test_lanczos_reads_the_device_once_per_step(monkeypatch):
    """DESIGN §4: no host-device synchronisation per step beyond the convergence check."""
    from helpers.quadratic import symmetric_with_spectrum

    import landscape_cli.linalg.lanczos as lanczos_module

    reads = []
    real = lanczos_module.read_finite
    monkeypatch.setattr(lanczos_module, "read_finite", lambda t: reads.append(1) or real(t))
    matrix = symmetric_with_spectrum(torch.linspace(-1, 10, 60, dtype=torch.float64), seed=0)
    result = lanczos_module.lanczos(DenseOperator(matrix), top=3, tol=1e-8,
                                    generator=torch.Generator().manual_seed(0))
    assert result.converged and len(reads) == result.steps + 1  # + the final measured residuals


def test_out_of_memory_blocks_are_split_and_stay_exact(mlp_exact, monkeypatch):
    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, strategy="stream")
    real = engine._forward_over_reverse

    def small_device(theta, block, batch):
        if len(block) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(theta, block, batch)

    monkeypatch.setattr(engine, "_forward_over_reverse", small_device)
    vectors = torch.randn(10, problem.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scale = float(hessian.abs().max())
    assert float((engine.hvp(vectors) - vectors @ hessian).abs().max()) < 1e-10 * scale * problem.n ** 0.5
    assert engine.describe()["hvp_chunk"] == 3 and any("out of memory" in w for w in engine.warnings)


def test_the_plan_is_one_frozen_object_that_describe_reports(mlp_exact):
    """Issue 26: the engine's plan is one frozen object; the report's settings are its
    ``describe()``, and what the engine learns (the groups) replaces it, never mutates it."""
    import dataclasses

    problem, hessian, _ = mlp_exact
    engine = HVPEngine(problem, strategy="stream")
    before = engine.plan
    assert before.groups is None and "batch_groups" not in engine.describe()
    three_blocks_are_exact(engine, hessian, rows=2)
    assert engine.plan is not before and engine.plan.groups is not None
    assert engine.describe() == engine.plan.describe()
    assert engine.describe()["batch_groups"] == len(engine.plan.groups) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        engine.plan.chunk = 1


def test_the_engine_is_an_operator_with_a_float64_counterpart():
    """Issue 26: the engine is a ``LinearOperator``; in float32 its ``exact()`` is the same
    Hessian with float64 products (the float64 engine's, to rounding), counted in its cost."""
    from landscape_cli.linalg.operator import LinearOperator

    single = HVPEngine(loaded("mlp.yaml", MLP_CKPT, "data.max_samples=300", "dtype=float32").problem)
    double = HVPEngine(loaded("mlp.yaml", MLP_CKPT, "data.max_samples=300").problem)
    assert isinstance(single, LinearOperator) and single.size == double.size
    assert single.dtype == torch.float32 and double.exact() is None
    vectors = torch.randn(2, single.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact, reference = single.exact()(vectors), double(vectors)
    assert exact.dtype == torch.float64
    assert float((exact - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    assert float((single(vectors).double() - reference).abs().max()) > 1e-9 * float(reference.abs().max())
    assert single.cost.hvps == 4 and single.exact() is single.exact()
