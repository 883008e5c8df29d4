"""Permutation alignment (issue 20, item 6): the permutation structure traced with torch.fx,
weight matching (Ainsworth et al. 2023) recovering known permutations exactly, the aligned
midpoint's loss, and the refusal of models outside the supported structure."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import re

import pytest
import torch
from helpers.samples import CNN_CKPT, ROOT, digits, fit
from torch import nn
from torch.func import functional_call

from landscape_cli.analyses.alignment import (
    PermutationSpec,
    align,
    apply_permutation,
    permutation_spec,
)
from landscape_cli.errors import LandscapeError
from landscape_cli.search.weight_matching import weight_matching

SUPPORTED = "--align weights supports chains of Linear/Conv/BatchNorm/LayerNorm"


def _sample_models():
    spec = importlib.util.spec_from_file_location("sample_models", ROOT / "sample_checkpoints" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELS = _sample_models()
ORIGINAL_APPLY = torch.autograd.Function.__dict__["apply"]


def random_perms(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    perms = {g.name: torch.randperm(g.size, generator=generator) for g in spec.groups}
    for name, perm in perms.items():        # none may be the identity, or the test proves less
        assert not torch.equal(perm, torch.arange(len(perm))), name
    return perms


def outputs(model: nn.Module, state, x) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(model, state, (x,))


def loss(model: nn.Module, state, x, y) -> float:
    return float(nn.functional.cross_entropy(outputs(model, state, x), y))


def midpoint(a, b):
    return {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a}


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained_mlp():
    """64 → 32 → ReLU → 32 → ReLU → 10, float64, 300 full-batch Adam steps on 300 digits."""
    x, y = digits(300)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 10)).double()
    fit(model, x, y)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def sample_cnn():
    """The shipped BatchNorm CNN in eval mode, float64, and its state dict."""
    x, y = digits(300)
    model = MODELS.make_cnn()
    state = torch.load(CNN_CKPT, weights_only=True)
    state = state.get("model_state_dict", state)
    model.load_state_dict(state)
    model = model.double().eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}, x, y


class Residual(nn.Module):
    """stem → x + fc2(relu(fc1(ln(x)))) → head: the stem, fc2 and the LayerNorm share units."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.head(h)


# ----------------------------------------------------------------------------- recovery


def test_mlp_permuted_copy_is_recovered_exactly(trained_mlp):
    model, x, y = trained_mlp
    state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    spec = permutation_spec(model, x[:4])
    assert [(g.name, g.size) for g in spec.groups] == [("0", 32), ("2", 32)]
    assert spec.group("0").axes[-1].key == "2.weight" and spec.group("0").axes[-1].axis == 1
    assert "4.weight" in spec.group("2").keys and "4.bias" not in spec.keys  # outputs fixed

    perms = random_perms(spec, seed=1)
    state_b = apply_permutation(spec, perms, state_a)
    assert max_difference(state_a, state_b) > 0.1
    assert float((outputs(model, state_a, x) - outputs(model, state_b, x)).abs().max()) < 1e-10

    aligned = align(model, x[:4], state_a, state_b, seed=0)
    for name, perm in perms.items():          # aligned unit i = B's unit perm⁻¹ ... = A's unit i
        assert torch.equal(aligned.perms[name], torch.argsort(perm)), name
    assert max_difference(aligned.state, state_a) < 1e-12
    assert aligned.converged and 1 <= aligned.sweeps <= 100
    assert aligned.group_sizes == {"0": 32, "2": 32}

    loss_a = loss(model, state_a, x, y)
    assert abs(loss(model, midpoint(state_a, aligned.state), x, y) - loss_a) < 1e-6
    unaligned = loss(model, midpoint(state_a, state_b), x, y)
    assert unaligned > loss_a + 0.2, (unaligned, loss_a)


def test_cnn_with_batchnorm_permuted_copy_is_recovered_exactly(sample_cnn):
    model, state_a, x, y = sample_cnn
    spec = permutation_spec(model, x[:4])
    assert [(g.name, g.size) for g in spec.groups] == [("features.0.0", 8), ("features.1.0", 16)]
    second = spec.group("features.1.0")
    assert {a.key for a in second.axes} >= {"features.1.1.running_mean", "features.1.1.running_var"}
    assert [(a.key, a.axis, a.block) for a in second.axes if a.key == "classifier.weight"] == [
        ("classifier.weight", 1, 4)]              # 16 channels × 2×2 positions after flatten
    assert not any("num_batches_tracked" in k for k in spec.keys)

    perms = random_perms(spec, seed=2)
    state_b = apply_permutation(spec, perms, state_a)
    count = "features.0.1.num_batches_tracked"
    assert torch.equal(state_b[count], state_a[count])
    variance = "features.1.1.running_var"
    assert torch.equal(state_b[variance], state_a[variance][perms["features.1.0"]])
    assert float((outputs(model, state_a, x) - outputs(model, state_b, x)).abs().max()) < 1e-10

    aligned = align(model, x[:4], state_a, state_b, seed=3)
    for name, perm in perms.items():
        assert torch.equal(aligned.perms[name], torch.argsort(perm)), name
    assert max_difference(aligned.state, state_a) < 1e-12

    loss_a = loss(model, state_a, x, y)
    assert abs(loss(model, midpoint(state_a, aligned.state), x, y) - loss_a) < 1e-6
    unaligned = loss(model, midpoint(state_a, state_b), x, y)
    assert unaligned > loss_a + 0.2, (unaligned, loss_a)


def test_residual_block_shares_one_group():
    torch.manual_seed(0)
    model = Residual().double()
    x = torch.randn(20, 8, dtype=torch.float64)
    spec = permutation_spec(model, x[:2])
    assert [(g.name, g.size, g.layers) for g in spec.groups] == [("stem", 16, ("stem", "fc2")),
                                                                  ("fc1", 24, ("fc1",))]
    stream = {(a.key, a.axis) for a in spec.group("stem").axes}
    assert stream == {("stem.weight", 0), ("stem.bias", 0), ("ln.weight", 0), ("ln.bias", 0),
                      ("fc1.weight", 1), ("fc2.weight", 0), ("fc2.bias", 0), ("head.weight", 1)}

    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    perms = random_perms(spec, seed=4)
    state_b = apply_permutation(spec, perms, state_a)
    assert float((outputs(model, state_a, x) - outputs(model, state_b, x)).abs().max()) < 1e-12
    aligned = align(model, x[:2], state_a, state_b)
    assert all(torch.equal(aligned.perms[n], torch.argsort(p)) for n, p in perms.items())
    assert max_difference(aligned.state, state_a) < 1e-12


def test_residual_onto_the_input_fixes_its_group():
    """x + f(x) with x the model's input: f's output units cannot move, its hidden ones can."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(6, 12), nn.Linear(12, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(x + self.fc2(nn.functional.gelu(self.fc1(x))))

    spec = permutation_spec(Block(), torch.randn(3, 6))
    assert [(g.name, g.size) for g in spec.groups] == [("fc1", 12)]


class Zoo(nn.Module):
    """Conv1d, BatchNorm1d, transpose, LayerNorm, pooling, mean, flatten, residual, SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(6)
        self.conv2 = nn.Conv1d(6, 6, 3, padding=1)
        self.ln = nn.LayerNorm(6)
        self.pool = nn.AvgPool1d(2)
        self.fc = nn.Linear(6 * 4, 10)
        self.bn2 = nn.BatchNorm1d(10)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + nn.functional.silu(self.conv2(h))                           # residual on channels
        h = self.ln(h.transpose(1, 2)).transpose(1, 2)                      # LayerNorm per position
        h = self.pool(h)                                                    # (N, 6, 4)
        g = h.mean(dim=2, keepdim=True)                                     # (N, 6, 1)
        h = (h * torch.sigmoid(g)).flatten(1)                               # (N, 24), blocks of 4
        return self.out(nn.functional.dropout(self.bn2(self.fc(h)), training=self.training))


def test_every_supported_operation_keeps_the_function():
    torch.manual_seed(0)
    model = Zoo().double().eval()
    with torch.no_grad():            # running statistics that are not all alike
        for name in ("bn1", "bn2"):
            bn = getattr(model, name)
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
    x = torch.randn(7, 3, 8, dtype=torch.float64)
    spec = permutation_spec(model, x[:2])
    assert [(g.name, g.size, g.layers) for g in spec.groups] == [("conv1", 6, ("conv1", "conv2")),
                                                                  ("fc", 10, ("fc",))]
    assert ("fc.weight", 1, 4) in {(a.key, a.axis, a.block) for a in spec.group("conv1").axes}
    assert ("ln.weight", 0, 1) in {(a.key, a.axis, a.block) for a in spec.group("conv1").axes}
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = apply_permutation(spec, random_perms(spec, seed=5), state_a)
    assert max_difference(state_a, state_b) > 0.1
    assert float((outputs(model, state_a, x) - outputs(model, state_b, x)).abs().max()) < 1e-12


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(MODELS.BasicBlock(8, 8, 1), MODELS.BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(MODELS.BasicBlock(8, 16, 2), MODELS.BasicBlock(16, 16, 1))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        h = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(h), 1))


def test_resnet_streams_share_groups_and_keep_the_function():
    torch.manual_seed(0)
    model = ResNet().double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    spec = permutation_spec(model, x[:2])
    assert [(g.name, g.layers) for g in spec.groups] == [
        ("stem", ("stem", "layer1.0.conv2", "layer1.1.conv2")),
        ("layer1.0.conv1", ("layer1.0.conv1",)), ("layer1.1.conv1", ("layer1.1.conv1",)),
        ("layer2.0.conv1", ("layer2.0.conv1",)),
        ("layer2.0.conv2", ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2")),
        ("layer2.1.conv1", ("layer2.1.conv1",))]
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = apply_permutation(spec, random_perms(spec, seed=3), state_a)
    assert float((outputs(model, state_a, x) - outputs(model, state_b, x)).abs().max()) < 1e-12
    assert max_difference(align(model, x[:2], state_a, state_b).state, state_a) < 1e-12


def test_tracing_leaves_the_model_as_it_was(sample_cnn):
    model, state, x, _ = sample_cnn
    model.train()
    try:
        permutation_spec(model, x[:4])
        assert model.training and all(m.training for m in model.modules())
        assert max_difference(model.state_dict(), state) == 0
    finally:
        model.eval()


# ----------------------------------------------------------------------------- the solver


def test_one_group_is_solved_exactly_against_brute_force():
    """With a single group the objective is one linear assignment: the result must be the best
    of all 5! permutations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    spec = permutation_spec(model, torch.randn(2, 3, dtype=torch.float64))
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = {k: torch.randn_like(v) for k, v in state_a.items()}

    def objective(perm):
        permuted = apply_permutation(spec, {"0": perm}, state_b)
        return sum(float((state_a[k] * permuted[k]).sum()) for k in spec.keys)

    best = max(itertools.permutations(range(5)), key=lambda p: objective(torch.tensor(p)))
    found = weight_matching(spec, state_a, state_b)
    assert found["0"].tolist() == list(best)
    assert found.converged and found.sweeps == 2   # one that moves, one that confirms


def test_weight_matching_is_deterministic_and_improves_the_objective(sample_cnn):
    model, state_a, x, _ = sample_cnn
    spec = permutation_spec(model, x[:4])
    generator = torch.Generator().manual_seed(7)
    state_b = {k: (v + 0.5 * v.std() * torch.randn(v.shape, generator=generator, dtype=v.dtype))
               if v.is_floating_point() else v for k, v in state_a.items()}
    state_b = apply_permutation(spec, random_perms(spec, seed=8), state_b)
    first = weight_matching(spec, state_a, state_b, seed=11)
    again = weight_matching(spec, state_a, state_b, seed=11)
    assert all(torch.equal(first[n], again[n]) for n in first)

    def objective(state):
        return sum(float((state_a[k] * state[k]).sum()) for k in spec.keys)

    assert objective(apply_permutation(spec, first, state_b)) > objective(state_b)


def test_apply_permutation_checks_its_arguments(sample_cnn):
    model, state, x, _ = sample_cnn
    spec = permutation_spec(model, x[:4])
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation(spec, {"features.0.0": torch.zeros(8, dtype=torch.long)}, state)
    with pytest.raises(ValueError, match="no permutation group"):
        apply_permutation(spec, {"nope": torch.arange(8)}, state)
    missing = {k: v for k, v in state.items() if k != "classifier.weight"}
    with pytest.raises(LandscapeError, match=r"classifier\.weight"):
        align(model, x[:4], state, missing)


# ----------------------------------------------------------------------------- refusals


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        return self.attn(h, h, h)[0]


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:                         # data-dependent control flow
            return self.fc(x)
        return x


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.inp(x))


class HandAttention(nn.Module):
    """q kᵀ v written out: matmul mixes the units of two projections."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        scores = (self.q(x) @ self.k(x).transpose(-2, -1)).softmax(dim=-1)
        return scores @ self.v(x)


class Heads(nn.Module):
    """A reshape that splits a projection's units into heads."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.proj(x).view(x.shape[0], 2, 4))


class Straight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sign()

    @staticmethod
    def backward(ctx, grad):
        return grad


class CustomFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(Straight.apply(self.fc1(x)))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


@pytest.mark.parametrize(("model", "shape", "names"), [
    (WithAttention(), (2, 3, 8), ["layer 'attn' (MultiheadAttention)"]),
    (Branchy(), (2, 4), ["layer 'gate' (Gate)", "control flow", "test_alignment.py:"]),
    (HandAttention(), (2, 3, 8), ["node 'matmul'"]),
    (Heads(), (2, 8), ["node 'view'", "'proj'"]),
    (CustomFunction(), (2, 4), ["Straight"]),
    (Twice(), (2, 4), ["layer 'fc' (Linear)", "more than once"]),
    (MODELS.Block(16, 2), (2, 5, 16), ["layer 'attn' (CausalSelfAttention)"]),
], ids=["multihead-attention", "control-flow", "matmul", "heads", "autograd-function", "twice",
        "transformer-block"])
def test_unsupported_models_are_refused_naming_the_layer(model, shape, names):
    with pytest.raises(LandscapeError) as error:
        permutation_spec(model, torch.randn(*shape))
    message = str(error.value)
    assert "\n" not in message and message.isprintable()
    assert SUPPORTED in message
    for name in names:
        assert name in message, message
    assert torch.autograd.Function.__dict__["apply"] is ORIGINAL_APPLY     # the trace's patch is undone
    assert Straight.apply(torch.tensor([-2.0])).item() == -1.0


def _wrapped(forward):
    """A decorator as transformers puts on forwards: ``*args, **kwargs`` around the method,
    which torch.fx cannot read (``code: co_varnames is too small``)."""

    @functools.wraps(forward)
    def call(*args, **kwargs):
        return forward(*args, **kwargs)

    return call


class Middle(Branchy):
    @_wrapped
    def forward(self, x, **options):
        return super().forward(x)


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.middle = Middle()
        self.out = nn.Linear(4, 2)

    @_wrapped
    def forward(self, x, **options):
        return self.out(self.middle(self.inp(x)))


def test_a_model_whose_own_forward_stops_the_tracer_is_refused_naming_the_deepest_layer():
    """The root's forward fails before any layer runs; tracing each layer alone (its own layers
    as leaves) finds ``middle`` (decorated, so it fails too) and, deeper, ``middle.gate`` (data-
    dependent control flow): the message names the deepest, and the root's own error."""
    with pytest.raises(LandscapeError) as error:
        permutation_spec(Decorated(), torch.randn(2, 4))
    message = str(error.value)
    assert "\n" not in message and SUPPORTED in message
    assert "layer 'middle.gate' (Gate)" in message, message
    assert "control flow" in message and "co_varnames" in message, message
    assert "the forward of Decorated" not in message


def test_gpt2_is_refused_naming_a_layer_not_the_model():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=8, vocab_size=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    with pytest.raises(LandscapeError) as error:
        permutation_spec(model, torch.randint(0, 16, (2, 5)))
    message = str(error.value)
    assert re.search(r"layer 'transformer\.[\w.]+' \(GPT2\w+\)", message), message
