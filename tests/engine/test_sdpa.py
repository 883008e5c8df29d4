"""Models that call ``F.scaled_dot_product_attention`` (GPT-2 in transformers, most modern
transformers): on the CPU its fused kernel has no double backward, so every HVP failed with an
internal error (issue 17.1). The engine runs attention through the math backend; the numbers
must equal the dense float64 Hessian."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.exact import dense_hessian
from helpers.runners import invoke
from torch.nn.attention import SDPBackend, sdpa_kernel

MODEL = '''
import torch
from torch import nn
import torch.nn.functional as F


class TinyAttention(nn.Module):
    """Self-attention over 4 tokens of width 8 by F.scaled_dot_product_attention, then a
    linear read-out: 243 parameters, small enough for a dense Hessian."""

    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return self.out(h.mean(dim=1))


def make():
    torch.manual_seed(0)
    return TinyAttention()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 4, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
'''


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """The checkpoint, its config (uneven batches: 16, 16, 8) and the exact float64 Hessian."""
    folder = tmp_path_factory.mktemp("sdpa")
    (folder / "tiny_attention.py").write_text(MODEL)
    (folder / "landscape.yaml").write_text(
        "model: {factory: tiny_attention.py:make}\n"
        "data: {factory: tiny_attention.py:data, batch_size: 16}\n"
        "device: cpu\ndtype: float64\n")
    namespace: dict = {}
    exec(compile(MODEL, "tiny_attention.py", "exec"), namespace)
    model = namespace["make"]().double()
    torch.save(model.state_dict(), folder / "ckpt.pt")
    x, y = namespace["data"]()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = dict(zip(names, (t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]),
                                                              shapes))))
        out = torch.func.functional_call(model, params, (x.double(),))
        return torch.nn.functional.cross_entropy(out, y)

    with sdpa_kernel(SDPBackend.MATH):
        hessian = dense_hessian(loss, theta)
    return folder, torch.linalg.eigvalsh(hessian), hessian


def _run(folder, *args) -> dict:
    ran = invoke([args[0], folder / "ckpt.pt", *args[1:], "--json"], cwd=folder)
    assert ran.returncode == 0, ran.detail()
    return json.loads(ran.stdout)


def test_spectrum_matches_the_dense_hessian(attention):
    folder, exact, _ = attention
    doc = _run(folder, "spectrum", "--top", "3", "--bottom", "2", "--tol", "1e-10")
    top = torch.tensor(doc["results"]["top_eigenvalues"], dtype=torch.float64)
    bottom = torch.tensor(doc["results"]["bottom_eigenvalues"], dtype=torch.float64)
    scale = exact.abs().max()
    assert (top - exact[-3:].flip(0)).abs().max() <= 1e-6 * scale
    assert (bottom - exact[:2]).abs().max() <= 1e-6 * scale
    assert doc["settings"]["attention"] == "sdpa-math"


def test_trace_matches_the_dense_hessian(attention):
    folder, _, hessian = attention
    """A Hutch++ sketch as wide as the 243 parameters spans everything: tr(QᵀHQ) is exact."""
    folder, _, hessian = attention
    doc = _run(folder, "trace", "--sketch", "243", "--max-hvps", "600")
    assert doc["results"]["trace"] == pytest.approx(float(hessian.trace()), rel=1e-8)


def test_classify_uses_the_exact_extremes(attention):
    folder, exact, _ = attention
    doc = _run(folder, "classify-critical-point", "--tol", "1e-10", "--no-density")
    scale = float(exact.abs().max())
    assert abs(doc["results"]["lambda_max"] - float(exact[-1])) <= 1e-6 * scale
    assert abs(doc["results"]["lambda_min"] - float(exact[0])) <= 1e-6 * scale
    assert doc["results"]["verdict"] == "not_critical"  # an untrained model: ‖∇L‖ is large
