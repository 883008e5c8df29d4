"""Model, data and loss factories for the sample checkpoints.

This file is self-contained (torch and numpy only) and is meant to be loaded by file path,
e.g. from a config: ``factory: ../sample_checkpoints/models.py:make_mlp``.

Models:

* :func:`make_mlp` -- 64 -> hidden -> 10 Tanh MLP for the 8x8 digits (smooth everywhere).
* :func:`make_cnn` -- two conv + BatchNorm blocks for the 8x8 digits.
* :func:`make_char_transformer` -- a tiny hand-written decoder-only character transformer.
* :class:`BasicBlock` -- ResNet's basic block, for the benchmarks' ResNets and the alignment tests.

Data and loss for the transformer:

* :func:`char_windows` -- next-character windows over a text file, as a ``TensorDataset``.
* :func:`char_vocab_size` -- size of the vocabulary :func:`char_windows` builds for a file.
* :func:`lm_loss` -- mean next-character cross-entropy, ``lm_loss(model, batch)``.

The digits themselves need no factory: ``data/digits.npz`` holds arrays ``x`` and ``y``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
TEXT = "data/corpus.txt"
"""The shipped text, relative to this file's folder."""

N_PIXELS = 64
N_CLASSES = 10


# ----------------------------------------------------------------------------- digits models


def make_mlp(hidden: int = 32) -> nn.Module:
    """64 -> ``hidden`` -> 10 MLP with a Tanh hidden layer (2,410 parameters at hidden=32).

    Input: float (N, 64) pixels in [0, 1]; output: (N, 10) logits.
    """
    return nn.Sequential(
        nn.Linear(N_PIXELS, hidden),
        nn.Tanh(),
        nn.Linear(hidden, N_CLASSES),
    )


class DigitsCNN(nn.Module):
    """Two conv -> BatchNorm -> ReLU -> 2x2 max-pool blocks, then a linear classifier.

    Input: float (N, 64), reshaped internally to (N, 1, 8, 8); output: (N, 10) logits.
    Feature maps go 8x8 -> 4x4 -> 2x2 with ``channels`` then ``2 * channels`` channels.
    """

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(1, channels),
            _conv_block(channels, 2 * channels),
        )
        self.classifier = nn.Linear(2 * channels * 2 * 2, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        image = x.reshape(-1, 1, 8, 8)
        return self.classifier(self.features(image).flatten(1))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 same-padding conv (no bias: BatchNorm supplies it) -> BN -> ReLU -> 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def make_cnn(channels: int = 8) -> nn.Module:
    """Small BatchNorm CNN for the 8x8 digits (1,922 parameters at channels=8)."""
    return DigitsCNN(channels)


# ----------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): conv-BN-ReLU-conv-BN plus the input, through a
    1×1 conv-BN projection when the shape changes; the addition is in place, as in
    torchvision's."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return torch.relu(out)



# ----------------------------------------------------------------------------- transformer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit q/k/v projections and softmax."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        """(N, T, D) -> (N, heads, T, D / heads)."""
        n, t, d = x.shape
        return x.reshape(n, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(n, t, d)
        return self.out(mixed)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Decoder-only character transformer: token + learned position embeddings,
    ``n_layers`` pre-LN blocks, a final LayerNorm and an untied linear head.

    Input: int64 (N, T) token ids with T <= ``context``; output: (N, T, vocab_size) logits.
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int,
                 context: int) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_heads) for _ in range(n_layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context of {self.context}")
        position = torch.arange(t, device=x.device)
        h = self.tokens(x) + self.positions(position)
        return self.head(self.ln_f(self.blocks(h)))


def make_char_transformer(vocab_size: int, d_model: int = 32, n_heads: int = 2,
                          n_layers: int = 1, context: int = 32) -> nn.Module:
    """Tiny decoder-only character transformer (17,172 parameters for the defaults and the
    52-character vocabulary of ``data/corpus.txt``, see :func:`char_vocab_size`).

    Written with plain Linear/LayerNorm/Embedding layers and an explicit causal softmax,
    so that ``torch.func`` transforms (vmap, jvp, hessian) go through it.
    """
    return CharTransformer(vocab_size, d_model, n_heads, n_layers, context)


# ----------------------------------------------------------------------------- text data


def _read_text(path: str) -> str:
    """Read a text file; a relative ``path`` is taken from this file's folder."""
    file = Path(path)
    return (file if file.is_absolute() else HERE / file).read_text(encoding="utf-8")


def _vocabulary(text: str) -> list[str]:
    """The fixed vocabulary of a text: its distinct characters, sorted."""
    return sorted(set(text))


def char_vocab_size(path: str = TEXT) -> int:
    """Number of distinct characters in the text file (the model's ``vocab_size``)."""
    return len(_vocabulary(_read_text(path)))


def char_windows(path: str = TEXT, context: int = 32, stride: int = 16,
                 max_windows: int | None = None) -> TensorDataset:
    """Next-character windows over a text file.

    Window ``i`` starts at character ``i * stride``; ``x`` is ``context`` characters and
    ``y`` the same window shifted by one. Both are int64 of shape (context,), encoded with
    the sorted characters of the file. A relative ``path`` is taken from this file's folder.
    """
    text = _read_text(path)
    index = {char: i for i, char in enumerate(_vocabulary(text))}
    ids = torch.tensor([index[char] for char in text], dtype=torch.int64)
    starts = range(0, len(ids) - context, stride)
    windows = torch.stack([ids[s : s + context + 1] for s in starts])
    if max_windows is not None:
        windows = windows[:max_windows]
    return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


def lm_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-character cross-entropy over every token of ``batch = (x, y)``."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
