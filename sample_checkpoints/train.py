"""Recreate every sample checkpoint from the shipped data (deterministic, CPU, ~1 minute).

Run from anywhere, e.g. from the repository root::

    python sample_checkpoints/train.py

Writes, next to this script:

* ``mlp/seed{0,1}_epoch{001,010,100}.pt`` -- plain state dicts of :func:`models.make_mlp`.
* ``cnn_bn/final.pt`` -- ``{"epoch", "model_state_dict", "optimizer_state_dict"}`` of
  :func:`models.make_cnn` and its Adam optimizer.
* ``char_transformer/final.pt`` -- plain state dict of :func:`models.make_char_transformer`.

and prints the final loss and accuracy of each model on its whole data set, in eval mode.
Training runs single-threaded with deterministic algorithms, so the same torch version on
the same platform gives bit-identical files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import models
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
Batch = tuple[Tensor, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]

MLP_SEEDS = (0, 1)
MLP_EPOCHS = 100
MLP_SAVED_EPOCHS = (1, 10, 100)
CNN_EPOCHS = 40
TRANSFORMER_EPOCHS = 400


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_digits() -> Batch:
    """The shipped digits: x float32 (1797, 64) in [0, 1], y int64 (1797,)."""
    with np.load(HERE / "data" / "digits.npz") as arrays:
        return torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])


def load_text() -> Batch:
    """The shipped text as next-character windows: x, y int64 (windows, context)."""
    return models.char_windows(models.TEXT).tensors


def classification_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy of the model's logits on ``batch = (x, y)``."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def minibatches(data: Batch, batch_size: int, generator: torch.Generator) -> Iterable[Batch]:
    """One epoch of shuffled minibatches."""
    x, y = data
    for index in torch.randperm(len(x), generator=generator).split(batch_size):
        yield x[index], y[index]


def train(model: nn.Module, data: Batch, loss_fn: LossFn, epochs: int, lr: float,
          batch_size: int, generator: torch.Generator,
          after_epoch: Callable[[int], None] = lambda epoch: None) -> torch.optim.Adam:
    """Adam with a cosine learning-rate decay to zero; ``after_epoch(e)`` runs after
    epoch ``e`` (1-based). Returns the optimizer."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data[0]) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for epoch in range(1, epochs + 1):
        for batch in minibatches(data, batch_size, generator):
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()
            schedule.step()
        after_epoch(epoch)
    return opt


@torch.no_grad()
def evaluate(model: nn.Module, data: Batch) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of ``data`` (every token for sequences),
    in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    x, y = data
    logits = model(x)
    logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    model.train(was_training)
    return loss, accuracy


def save(obj: object, path: Path) -> None:
    """``torch.save`` into a folder that may not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def train_mlp(seed: int, data: Batch) -> tuple[float, float]:
    """Train the MLP with ``seed``, saving its state dict after each of MLP_SAVED_EPOCHS."""
    generator = seed_everything(seed)
    model = models.make_mlp()

    def checkpoint(epoch: int) -> None:
        if epoch in MLP_SAVED_EPOCHS:
            save(model.state_dict(), HERE / "mlp" / f"seed{seed}_epoch{epoch:03d}.pt")

    train(model, data, classification_loss, MLP_EPOCHS, lr=1e-2, batch_size=64,
          generator=generator, after_epoch=checkpoint)
    return evaluate(model, data)


def train_cnn(data: Batch) -> tuple[float, float]:
    """Train the BatchNorm CNN and save it as a training-loop dict with its optimizer."""
    generator = seed_everything(0)
    model = models.make_cnn()
    opt = train(model, data, classification_loss, CNN_EPOCHS, lr=1e-2, batch_size=64,
                generator=generator)
    save({"epoch": CNN_EPOCHS, "model_state_dict": model.state_dict(),
          "optimizer_state_dict": opt.state_dict()}, HERE / "cnn_bn" / "final.pt")
    return evaluate(model, data)


def train_transformer(data: Batch) -> tuple[float, float]:
    """Train the character transformer on the shipped text and save its state dict."""
    generator = seed_everything(0)
    model = models.make_char_transformer(models.char_vocab_size(models.TEXT))
    train(model, data, models.lm_loss, TRANSFORMER_EPOCHS, lr=3e-3, batch_size=32,
          generator=generator)
    save(model.state_dict(), HERE / "char_transformer" / "final.pt")
    return evaluate(model, data)


def main() -> None:
    """Train every sample and print a summary of the final losses and accuracies."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    digits = load_digits()
    results = {f"mlp seed{seed}": train_mlp(seed, digits) for seed in MLP_SEEDS}
    results["cnn_bn"] = train_cnn(digits)
    results["char_transformer"] = train_transformer(load_text())
    for name, (loss, accuracy) in results.items():
        print(f"{name:18s} loss {loss:.4g}  accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
