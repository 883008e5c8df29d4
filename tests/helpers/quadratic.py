"""Test models with a Hessian chosen exactly: L(θ) = ½ θᵀAθ + bᵀθ with A = Q diag(λ) Qᵀ, and the
config and checkpoint that run them through the CLI (the config names this file's factories)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: this file, as a config's ``factory: FILE:NAME`` names it
QUADRATIC_FILE = Path(__file__).resolve()


def symmetric_with_spectrum(eigenvalues, seed: int = 0) -> torch.Tensor:
    """A = Q diag(λ) Qᵀ with a random orthogonal Q (float64)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=generator, dtype=torch.float64))
    return (q * lam) @ q.T


class Quadratic(nn.Module):
    """forward(x) = ½ θᵀAθ + bᵀθ (the batch only sets the device); its Hessian is A."""

    def __init__(self, matrix: torch.Tensor, gradient_scale: float = 1.0, seed: int = 0):
        """θ and b random, b scaled by ``gradient_scale``; with 0, θ = 0 is a critical point."""
        super().__init__()
        n = matrix.shape[0]
        generator = torch.Generator().manual_seed(seed + 1)
        theta = torch.randn(n, generator=generator, dtype=torch.float64)
        self.theta = nn.Parameter(theta if gradient_scale else torch.zeros_like(theta))
        self.register_buffer("matrix", matrix)
        self.register_buffer("b", gradient_scale * torch.randn(n, generator=generator,
                                                                dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.theta @ (self.matrix @ self.theta) + self.b @ self.theta + 0 * x.sum()


def make_quadratic(eigenvalues, seed: int = 0, gradient_scale: float = 1.0) -> Quadratic:
    return Quadratic(symmetric_with_spectrum(eigenvalues, seed), gradient_scale, seed)


def make_data(n: int = 10):
    """A dummy dataset: the quadratic ignores its inputs."""
    return torch.zeros(n, 1), torch.zeros(n)


def quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    return model(batch[0])


class Kink(nn.Module):
    """forward(x) = Σ|w| at w = 0: the loss is finite but its Hessian is not defined there."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w ** 2).sqrt().sum() + 0 * x.sum()


def make_kink(n: int = 3) -> Kink:
    return Kink(n)


def write_quadratic_config(folder: Path, eigenvalues, seed: int = 0, gradient_scale: float = 1.0) -> Path:
    """A config whose model is this file's quadratic with the given spectrum."""
    here = QUADRATIC_FILE
    path = folder / "quadratic.yaml"
    path.write_text(
        f"model:\n  factory: {here}:make_quadratic\n"
        f"  kwargs: {{eigenvalues: {list(map(float, eigenvalues))}, seed: {seed}, "
        f"gradient_scale: {gradient_scale}}}\n"
        f"data:\n  factory: {here}:make_data\n  batch_size: 4\n"
        f"loss:\n  fn: {here}:quadratic_loss\n"
        "dtype: float64\ndevice: cpu\n"
    )
    return path


def save_quadratic_checkpoint(folder: Path, eigenvalues, seed: int = 0, gradient_scale: float = 1.0) -> Path:
    path = folder / "quadratic.pt"
    torch.save(make_quadratic(eigenvalues, seed, gradient_scale).state_dict(), path)
    return path


class BlockQuadratic(nn.Module):
    """Σ_b ½ θ_bᵀA_bθ_b + b_bᵀθ_b over named parameters θ_b (dotted names make submodules): a
    Hessian that is block-diagonal over the parameters, each block A_b with a chosen spectrum
    (and eigenvectors drawn with seed + b, or with ``seed`` for all: ``same_basis``)."""

    def __init__(self, spectra: dict[str, list[float]], seed: int = 0, same_basis: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed + 1)
        self.names = list(spectra)
        for i, (name, eigenvalues) in enumerate(spectra.items()):
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            n = len(eigenvalues)
            module.register_parameter(leaf, nn.Parameter(torch.randn(n, generator=generator,
                                                                     dtype=torch.float64)))
            basis_seed = seed if same_basis else seed + i
            module.register_buffer(f"{leaf}_matrix", symmetric_with_spectrum(eigenvalues, basis_seed))
            module.register_buffer(f"{leaf}_b", torch.randn(n, generator=generator,
                                                            dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0 * x.sum()
        for name in self.names:
            module_name, _, leaf = name.rpartition(".")
            module = self.get_submodule(module_name)
            theta = getattr(module, leaf)
            matrix, b = getattr(module, f"{leaf}_matrix"), getattr(module, f"{leaf}_b")
            total = total + 0.5 * theta @ (matrix @ theta) + b @ theta
        return total


def make_block_quadratic(spectra: dict[str, list[float]], seed: int = 0,
                         same_basis: bool = False) -> BlockQuadratic:
    return BlockQuadratic(spectra, seed, same_basis)


def write_block_quadratic(folder: Path, spectra: dict[str, list[float]], seed: int = 0,
                          same_basis: bool = False) -> tuple[Path, Path]:
    """The config and checkpoint of a block quadratic with the given spectra per parameter."""
    import json

    here = QUADRATIC_FILE
    config = folder / "blocks.yaml"
    config.write_text(
        f"model:\n  factory: {here}:make_block_quadratic\n"
        f"  kwargs: {json.dumps({'spectra': spectra, 'seed': seed, 'same_basis': same_basis})}\n"
        f"data:\n  factory: {here}:make_data\n  batch_size: 4\n"
        f"loss:\n  fn: {here}:quadratic_loss\n"
        "dtype: float64\ndevice: cpu\n")
    checkpoint = folder / "blocks.pt"
    torch.save(make_block_quadratic(spectra, seed, same_basis).state_dict(), checkpoint)
    return config, checkpoint
