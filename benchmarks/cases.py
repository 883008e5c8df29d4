"""The benchmark models: the three samples and ResNet-style networks on 32×32 inputs.

Each case is this tool's ``Problem`` (the dataset loss Σ_b n_b·L_b / N over fixed batches)
plus what the reference libraries need to see the same loss: an eval-mode copy of the model,
a loader over the same batches and a criterion with criterion(model(x), y) = L_b.
The ResNets have random weights (BatchNorm statistics from one pass over the data) and
synthetic images whose labels a fixed random linear map of the pixels decides.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape_cli.config import load_config, resolve_device
from landscape_cli.data_batches import map_tensors
from landscape_cli.engine.problem import Problem, build_problem, criterion_loss, exact_float32
from landscape_cli.loading.data import Batches
from landscape_cli.loading.factory import resolve
from landscape_cli.session import load

ROOT = Path(__file__).resolve().parent.parent
BasicBlock = resolve(f"{ROOT / 'sample_checkpoints' / 'models.py'}:BasicBlock", "benchmarks", "models")

SAMPLES = {
    "mlp": ROOT / "sample_checkpoints/mlp/seed0_epoch100.pt",
    "cnn_bn": ROOT / "sample_checkpoints/cnn_bn/final.pt",
    "char_transformer": ROOT / "sample_checkpoints/char_transformer/final.pt",
}
#: name: (blocks per stage, widths, samples, batch size)
RESNETS = {
    "resnet8": ((1, 1, 1), (16, 32, 64), 512, 128),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), 10_000, 500),
}
#: name: hidden widths of a Tanh MLP on the 1,797 digits, trained by the benchmark itself:
#: 64-512-512-10 has 301,066 parameters (issue 32's "wide MLP")
WIDE = {"wide_mlp": (512, 512)}
CASES = [*SAMPLES, *WIDE, *RESNETS]


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3×3 stem, stages of basic blocks, global pool.
    Blocks (2, 2, 2, 2) with widths (64, 128, 256, 512) is ResNet-18 (11.2M parameters)."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c_in = [], widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for i in range(count):
                layers.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class FlatCrossEntropy(nn.Module):
    """Cross-entropy over every position of (B, T, V) logits: the sample transformer's loss."""

    reduction = "mean"  # per sequence, as curvlinops reads it to weight batches

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass
class Case:
    name: str
    problem: Problem
    criterion: nn.Module
    batch_size: int

    def model(self) -> nn.Module:
        """A fresh eval-mode copy of the model with trainable parameters, for a reference."""
        model = copy.deepcopy(self.problem.objective.model).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def loader(self) -> DataLoader:
        """The same batches, in the same order, as tensors on the problem's device."""
        device = self.problem.device
        x = torch.cat([b[0] for b in self.problem.batches]).to(device)
        y = torch.cat([b[1] for b in self.problem.batches]).to(device)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=False)


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    teacher = torch.randn(3 * 32 * 32, 10, generator=torch.Generator().manual_seed(1234))
    return x, (x.flatten(1) @ teacher).argmax(dim=1)


def _resnet(name: str, device: torch.device, dtype: torch.dtype, scale: int) -> Case:
    blocks, widths, n, batch = RESNETS[name]
    torch.manual_seed(0)
    model = ResNet(blocks, widths)
    x, y = _images(n * scale, seed=0)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics from one pass over the data
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        for i in range(0, min(len(x), 2000), batch):
            model(x[i:i + batch])
    pieces = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    data = Batches(pieces, [len(p[1]) for p in pieces])
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), data, device=device,
                            dtype=dtype)
    return Case(name, problem, nn.CrossEntropyLoss(), batch)


def _wide_mlp(name: str, device: torch.device, dtype: torch.dtype, scale: int) -> Case:
    """A Tanh MLP of widths ``WIDE[name]`` on the digits, 40 epochs of seeded Adam (lr 1e-3,
    batches of 256) away from its initialisation: trained, not converged, as checkpoints are."""
    import numpy as np

    digits = np.load(ROOT / "sample_checkpoints" / "data" / "digits.npz")
    x, y = torch.from_numpy(digits["x"]), torch.from_numpy(digits["y"])
    torch.manual_seed(0)
    widths = (x.shape[1], *WIDE[name])
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(40):
        for i in torch.randperm(len(x), generator=order).split(256):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            optimizer.step()
    pieces = [(x[i:i + 256], y[i:i + 256]) for _ in range(scale) for i in range(0, len(x), 256)]
    data = Batches(pieces, [len(p[1]) for p in pieces])
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), data, device=device,
                            dtype=dtype)
    return Case(name, problem, nn.CrossEntropyLoss(), 256)


def build(name: str, device: str = "cpu", dtype: str = "float32", scale: int = 1) -> Case:
    """Case ``name`` with ``scale`` times its data (copies of the samples' batches)."""
    if name in RESNETS:
        exact_float32(resolved := resolve_device(device))  # TF32 off, as the CLI
        return _resnet(name, resolved, getattr(torch, dtype), scale)
    if name in WIDE:
        exact_float32(resolved := resolve_device(device))
        return _wide_mlp(name, resolved, getattr(torch, dtype), scale)
    config = load_config(ROOT / "configs" / f"{name}.yaml", [f"device={device}", f"dtype={dtype}"])
    problem = load(config, SAMPLES[name]).problem
    if scale > 1:
        problem.batches = [map_tensors(b, torch.clone) for _ in range(scale) for b in problem.batches]
        problem.weights = [w / scale for _ in range(scale) for w in problem.weights]
        problem.n_samples *= scale
    criterion = FlatCrossEntropy() if name == "char_transformer" else nn.CrossEntropyLoss()
    return Case(name, problem, criterion, config.data.batch_size)
