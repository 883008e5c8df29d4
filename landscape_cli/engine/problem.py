"""A ``Problem``: the dataset loss L(θ) = Σ_b n_b·L_b(θ) / Σ_b n_b as a function of a flat
vector θ of the selected parameters (DESIGN §4), everything else held fixed.

The model runs through ``torch.func.functional_call`` with views of θ in place of its
parameters, so one flat leaf tensor serves autograd and ``torch.func`` alike. The batches stay
in host memory (pinned for CUDA) and go to the device one at a time, so the device holds one
batch, never the dataset.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from landscape_cli.data_batches import to_device
from landscape_cli.engine import distributed
from landscape_cli.errors import ConfigError, LandscapeError, NumericalError, exception_line
from landscape_cli.loading.data import Batches
from landscape_cli.loading.factory import USER_CODE_ERRORS
from landscape_cli.names import SDPA_FUSED, SDPA_MATH

LossFn = Callable[[nn.Module, Any], Any]
#: What a loss may return, by the config key that names it.
LOSS_FORMS = {
    "loss.fn": "fn(model, batch) must return the mean loss over the batch as a real scalar "
               "tensor computed from the model's outputs, or a pair (mean loss, sample count)",
    "loss.factory": "a criterion must return the mean loss over the batch as a real scalar "
                    "tensor (check its reduction)",
}


def call_model(model: nn.Module, inputs: Any, params: dict[str, torch.Tensor] | None = None) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict; with ``params``
    in place of the model's own."""
    if isinstance(inputs, dict):
        args, kwargs = (), inputs
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}
    if params is None:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, params, args, kwargs)


@dataclass(frozen=True)
class CriterionLoss:
    """``criterion(outputs, targets)`` (``loss.factory``) as ``fn(model, (inputs, targets))``."""

    criterion: Callable[[Any, Any], torch.Tensor]

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("a criterion loss needs batches of (inputs, targets); use loss.fn "
                             "for other batch shapes")
        return self.criterion(call_model(model, batch[0]), batch[1])


def criterion_loss(criterion: Callable[[Any, Any], torch.Tensor]) -> LossFn:
    """Turn ``criterion(outputs, targets)`` into ``fn(model, (inputs, targets))``."""
    return CriterionLoss(criterion)


#: the dtype each mixed ``precision`` runs the passes in under autocast (Lightning's names)
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Objective(nn.Module):
    """The model with its loss attached, so that one functional call runs both. ``autocast``:
    (device type, dtype) that every pass runs under, for a mixed precision; None for none."""

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 autocast: tuple[str, torch.dtype] | None = None):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.autocast = autocast

    @property
    def key(self) -> str:
        """The config key that names the loss."""
        return "loss.factory" if isinstance(self.loss_fn, CriterionLoss) else "loss.fn"

    #: attention through SDPA's fused kernels: set by the ``fd`` engine, whose products need
    #: no double backward (``engine/hvp.py``), for every pass after it
    fused_attention = False

    @property
    def attention_kernels(self) -> str:
        """How attention runs, for ``settings.attention``."""
        return SDPA_FUSED if self.fused_attention else SDPA_MATH

    def forward(self, batch: Any) -> Any:
        """What the loss returns: the mean loss, or (mean loss, sample count); ``build_problem``
        checks every batch's once. Attention runs through SDPA's math backend in every pass
        (unless ``fused_attention``): the fused kernels (flash, memory-efficient) have no double
        backward, and one backend everywhere keeps the loss the same function of θ in every
        pass. Under a mixed precision the forward pass runs under autocast, here, so that every
        pass and every way to a product (double backward, forward-over-reverse, finite
        differences) differentiates the same function; the backward passes follow the dtypes
        the forward chose."""
        mixed = nullcontext() if self.autocast is None else torch.autocast(
            self.autocast[0], dtype=self.autocast[1])
        with nullcontext() if self.fused_attention else sdpa_kernel(SDPBackend.MATH), mixed:
            return self.loss_fn(self.model, batch)


class AttentionSeen(TorchFunctionMode):
    """Notes whether ``F.scaled_dot_product_attention`` ran inside the block (for the report)."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func is nn.functional.scaled_dot_product_attention
        return func(*args, **(kwargs or {}))


def mean_loss(out: Any) -> torch.Tensor:
    """The mean loss in what the objective returned."""
    return out[0] if isinstance(out, (tuple, list)) else out


def select_parameters(model: nn.Module, patterns: Sequence[str] = ()) -> list[str]:
    """Trainable parameter names matching any glob in ``patterns`` (all when empty)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not patterns:
        chosen = names
    else:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise LandscapeError(f"--params {' '.join(patterns)}: no parameter selected "
                             f"(the model has: {sample or 'no trainable parameters'})")
    return chosen


@dataclass
class Problem:
    """L(θ) over the selected parameters of a model on a fixed list of batches."""

    objective: Objective
    names: list[str]
    shapes: list[torch.Size]
    theta0: torch.Tensor
    batches: list[Any]
    weights: list[float]
    bn: str
    n_samples: int
    device: torch.device
    dtype: torch.dtype
    classification: bool = False
    groups: dict[str, slice] = field(default_factory=dict)
    #: the dtype the loss comes out in (a model or loss may cast, whatever ``dtype`` is)
    loss_dtype: torch.dtype | None = None
    #: whether the model calls scaled_dot_product_attention (run by its math backend)
    attention: bool = False
    #: the batches this process passes over (under torchrun, its share; else all of them)
    owned: list[int] | None = None
    #: whether the batches are read again from the loader on every pass (``data.stream``)
    streamed: bool = False
    #: how θ is held across the ranks (``linalg/shards.py``; ``engine/sharding.py``), None:
    #: whole in this process
    shards: Any = None

    @property
    def own(self) -> list[int]:
        return list(range(len(self.batches))) if self.owned is None else self.owned

    @property
    def n(self) -> int:
        return self.theta0.numel()

    def unflatten(self, theta: torch.Tensor, prefix: str = "model.") -> dict[str, torch.Tensor]:
        """Views of a flat θ, keyed as the objective's (or, with ``prefix=''``, the model's)
        parameters."""
        pieces = theta.split([s.numel() for s in self.shapes])
        return {prefix + n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def batch(self, index: int) -> Any:
        """Batch ``index`` on the device (an asynchronous copy from pinned memory on CUDA)."""
        return to_device(self.batches[index], self.device, self.dtype)

    def mean_batch_loss(self, theta: torch.Tensor, batch: Any) -> torch.Tensor:
        """L_b(θ), the mean loss over one batch already on the device."""
        return mean_loss(self.output(theta, batch))

    def output(self, theta: torch.Tensor, batch: Any,
               buffers: dict[str, torch.Tensor] | None = None) -> Any:
        """What the objective returns for one batch at θ, with ``buffers`` (by the model's
        names) in place of the model's own."""
        state = {**self.unflatten(theta),
                 **{"model." + name: value for name, value in (buffers or {}).items()}}
        return torch.func.functional_call(self.objective, state, (batch,))

    def weighted_gradient(self, theta: torch.Tensor, weight: float,
                          batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(w·L_b(θ), w·∇L_b(θ)) for one batch by an ordinary backward pass, no graph kept."""
        theta = theta.detach().requires_grad_(True)
        loss = weight * self.mean_batch_loss(theta, batch)
        return loss.detach(), torch.autograd.grad(loss, theta)[0]


def exact_float32(device: torch.device) -> None:
    """Turn TF32 off on a CUDA device: TF32 (on by default for cuDNN convolutions) rounds
    float32 products to 10 mantissa bits, so the Hessian would be computed in less precision
    than the dtype says. Called where a run starts, with its device."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def apply_bn_policy(model: nn.Module, bn: str) -> None:
    """``eval``: running statistics. ``train-stats``: batch statistics, buffers never updated
    (``torch.func.replace_all_batch_norm_modules_``). Dropout is off either way."""
    model.eval()
    if bn == "train-stats":
        torch.func.replace_all_batch_norm_modules_(model)


def build_problem(model: nn.Module, loss_fn: LossFn, data: Batches, *, bn: str = "eval",
                  params: Sequence[str] = (), device: torch.device, dtype: torch.dtype,
                  precision: str = "32", accuracy: bool = True) -> Problem:
    """Assemble the problem and check that the loss is finite at the checkpoint. ``precision``:
    a mixed one (``AUTOCAST``) runs every pass under autocast on float32 weights."""
    model = model.to(device=device, dtype=dtype)
    apply_bn_policy(model, bn)
    names = select_parameters(model, params)
    named = dict(model.named_parameters())
    theta0 = torch.cat([named[n].detach().reshape(-1) for n in names]).clone()
    mixed = AUTOCAST.get(precision)
    objective = Objective(model, loss_fn, None if mixed is None else (device.type, mixed)).to(
        device=device, dtype=dtype)
    host = torch.device("cpu")
    # streamed batches are moved to the device as they are read, pass after pass
    batches = data.batches if data.streamed else [to_device(b, host, dtype, pin=device.type == "cuda")
                                                  for b in data.batches]
    problem = Problem(
        objective=objective,
        names=names,
        shapes=[named[n].shape for n in names],
        theta0=theta0,
        batches=batches,
        weights=[],
        bn=bn,
        n_samples=data.n_samples,
        device=device,
        dtype=dtype,
        classification=accuracy and data.classification,
        streamed=data.streamed,
    )
    problem.weights = _batch_weights(problem, data)
    if distributed.launched():
        problem.owned = distributed.share(len(batches))
    offsets = torch.tensor([0] + [s.numel() for s in problem.shapes]).cumsum(0).tolist()
    problem.groups = {n: slice(a, b) for n, a, b in zip(names, offsets[:-1], offsets[1:])}
    return problem


def _batch_weights(problem: Problem, data: Batches) -> list[float]:
    """n_b / N, where n_b is the batch size or the count ``loss.fn`` returns with its mean."""
    counts = []
    for index, size in enumerate(data.sizes):
        count = _checked_loss(problem, index, data.source)
        counts.append(float(size) if count is None else count)
    total = sum(counts)
    return [c / total for c in counts]


def _checked_loss(problem: Problem, index: int, source: str) -> float | None:
    """Run the loss on batch ``index`` at the checkpoint's weights and check what it returns
    (``LOSS_FORMS``): a finite real scalar, with a positive count if any, and, on the first
    batch, one with a graph back to the weights: a detached loss has no Hessian, and the
    analysis would fail on it far from its cause. Returns the count (None: not given)."""
    key = problem.objective.key
    first = index == 0
    theta = problem.theta0.detach().requires_grad_(first)
    # the first batch shows whether the model calls attention (watching costs per operator)
    batch = problem.batch(index)  # a streamed loader's own errors are its own, not the model's
    with torch.set_grad_enabled(first), AttentionSeen() if first else nullcontext() as attention:
        try:
            out = torch.func.functional_call(problem.objective, problem.unflatten(theta), (batch,))
        except USER_CODE_ERRORS as exc:
            raise ConfigError(source, None, f"the forward pass (the model, then {key}) failed on "
                              f"batch {index}: {exception_line(exc)}") from exc
    pair = isinstance(out, (tuple, list))
    if (pair and len(out) != 2) or not _is_scalar(mean_loss(out)):
        raise ConfigError(source, key, f"returned {_describe(out)} for batch {index}; "
                          f"{LOSS_FORMS[key]}")
    loss = mean_loss(out)
    if first:
        problem.loss_dtype, problem.attention = loss.dtype, attention.seen
    if first and not loss.requires_grad:
        raise ConfigError(source, key, f"returned a loss that does not depend on the parameters "
                          f"(no grad_fn: detached, made under torch.no_grad or from a number) for "
                          f"batch {index}; {LOSS_FORMS[key]}")
    if not torch.isfinite(loss):
        raise NumericalError(f"the loss is not finite ({loss.item()}) at the checkpoint's "
                             "weights on a data batch; check the weights and the data")
    return _positive_count(out[1], key, index, source) if pair else None


def _is_scalar(loss: Any) -> bool:
    """A real floating-point tensor of one element: something to take a Hessian of."""
    return isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()


def _positive_count(count: Any, key: str, index: int, source: str) -> float:
    """The sample count a loss returned with its mean, as a number > 0 (the batch's weight
    in the dataset mean is its share of all counts)."""
    value = _number(count)
    if value is None or not math.isfinite(value) or value <= 0:
        shown = _describe(count) if value is None else f"{value:g}"
        raise ConfigError(source, key, f"returned a sample count of {shown} for batch {index}; "
                          "counts must be positive numbers")
    return value


def _number(value: Any) -> float | None:
    """A real number, or a tensor holding one, as a float; None for anything else."""
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 and not value.is_complex() else None
    return float(value) if isinstance(value, numbers.Real) else None


def _describe(value: Any) -> str:
    """What a loss returned, in a few words: its type, and a tensor's dtype and shape."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return _a(f"{str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}")
    if isinstance(value, (tuple, list)):
        items = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of {len(value)} ({items})"
    return _a(type(value).__name__)


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
