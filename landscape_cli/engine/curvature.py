"""Curvature matrices other than the Hessian (``--curvature``), as operators whose products are
one pass over the data (``Passes.sum_over``), exact, without forming a Jacobian:

* ``ggn``: Jᵀ H_out J (Schraudolph 2002; Martens 2020, "New insights and perspectives on the
  natural gradient method"), J the Jacobian of the model's outputs in θ, H_out the Hessian of the
  loss in the outputs: a forward-mode product J·v, H_out·(Jv) by reverse-over-reverse through
  the criterion alone, and a reverse-mode product Jᵀ·u.
* ``empirical-fisher``: the uncentred covariance of the per-unit gradients, (1/U)Σ_u g_u g_uᵀ
  with g_u = J_uᵀ s_u, s_u the gradient of unit u's loss in its outputs at the true labels;
  a unit is a sample (a row of MSE's outputs), a position (cross-entropy's classes over extra
  dimensions) or an element (BCE). Kunstner et al. 2019 say what it is not.
* ``fisher``: the same outer products at labels sampled from the model's predictive
  distribution (categorical, Bernoulli, Gaussian), ``samples`` draws each under the seed, the
  draws fixed for the operator's life (a fixed symmetric matrix for Lanczos). For these losses
  E[s sᵀ] = H_out, so the Fisher is the GGN in expectation.

The split of the loss into outputs and criterion is known for ``loss.factory`` criteria
(CrossEntropy, MSE, BCEWithLogits, NLL) with a mean reduction; a ``loss.fn`` is refused with the
reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape_cli.engine.passes import Passes
from landscape_cli.engine.problem import CriterionLoss, Problem, call_model
from landscape_cli.errors import LandscapeError

HESSIAN, GGN, FISHER, EMPIRICAL_FISHER = "hessian", "ggn", "fisher", "empirical-fisher"
KNOWN = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss, nn.NLLLoss)


def criterion_of(problem: Problem, curvature: str) -> nn.Module:
    """The problem's loss as a criterion of the model's outputs, or a one-line refusal."""
    loss = problem.objective.loss_fn
    criterion = loss.criterion if isinstance(loss, CriterionLoss) else None
    if not isinstance(criterion, KNOWN):
        what = "loss.fn" if criterion is None else type(criterion).__name__
        raise LandscapeError(f"--curvature {curvature}: the loss must split into the model's outputs "
                             "and a known criterion (loss.factory: CrossEntropyLoss, MSELoss, "
                             f"BCEWithLogitsLoss or NLLLoss, mean reduction); {what} does not")
    if criterion.reduction != "mean" or getattr(criterion, "weight", None) is not None or (
            getattr(criterion, "label_smoothing", 0.0) or getattr(criterion, "pos_weight", None) is not None):
        raise LandscapeError(f"--curvature {curvature}: {type(criterion).__name__} with a reduction "
                             "other than mean, class weights or label smoothing is not supported")
    if isinstance(criterion, nn.NLLLoss) and curvature != EMPIRICAL_FISHER:
        raise LandscapeError(f"--curvature {curvature}: NLLLoss takes log-probabilities, in which it "
                             "is linear (its GGN is 0); use CrossEntropyLoss on the logits")
    return criterion


def _units(criterion: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """The outputs as (units, values of a unit): a sample's row (MSE), a position's classes
    (cross-entropy, NLL: the class dimension is 1), an element (BCE)."""
    if isinstance(criterion, nn.MSELoss):
        return outputs.reshape(outputs.shape[0], -1)
    if isinstance(criterion, nn.BCEWithLogitsLoss):
        return outputs.reshape(-1, 1)
    return outputs.movedim(1, -1).reshape(-1, outputs.shape[1]) if outputs.dim() > 1 else outputs[None]


def _from_units(criterion: nn.Module, units: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(criterion, (nn.MSELoss, nn.BCEWithLogitsLoss)) or like.dim() == 1:
        return units.reshape(like.shape)
    moved = like.movedim(1, -1)
    return units.reshape(moved.shape).movedim(-1, 1)


def sampled_labels(criterion: nn.Module, outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution at ``outputs``, under which the
    criterion is (up to a constant) the negative log-likelihood of each unit: categorical
    (softmax), Bernoulli (sigmoid), Gaussian of variance D/2 per value (MSE's mean over a row
    of D values)."""
    with torch.no_grad():
        if isinstance(criterion, nn.CrossEntropyLoss):
            probs = torch.softmax(_units(criterion, outputs).double(), dim=1)
            drawn = torch.multinomial(probs.cpu(), 1, generator=generator).to(outputs.device)
            shape = outputs.movedim(1, -1).shape[:-1] if outputs.dim() > 1 else ()
            return drawn.reshape(shape)
        if isinstance(criterion, nn.BCEWithLogitsLoss):
            p = torch.sigmoid(outputs.double()).cpu()
            return torch.bernoulli(p, generator=generator).to(outputs)
        d = outputs[0].numel()
        noise = torch.randn(outputs.shape, generator=generator, dtype=torch.float64)
        return outputs + (noise * math.sqrt(d / 2)).to(outputs)


@dataclass
class CurvatureOperator:
    """The GGN, Fisher or empirical Fisher of a problem at its θ₀ as a ``LinearOperator``."""

    problem: Problem
    passes: Passes
    kind: str
    seed: int = 0
    #: Fisher: label draws per unit (the estimate averages their outer products)
    samples: int = 1
    criterion: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.criterion = criterion_of(self.problem, self.kind)
        self.size, self.dtype, self.device = self.problem.n, self.problem.dtype, self.problem.device
        self.shards = None
        self._labels: dict[int, list[torch.Tensor]] = {}

    def memory_left(self) -> int | None:
        return None

    def exact(self) -> None:
        return None

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        single = block.dim() == 1
        rows = (block[None] if single else block).to(device=self.device, dtype=self.dtype)
        counter = iter(self.problem.own)  # the batches in the order the pass goes through them

        def term(weight: float, batch: Any) -> tuple[torch.Tensor]:
            return (self._products(rows, batch, next(counter)).mul_(weight),)

        out, = self.passes.sum_over(term)
        self.passes.cost.hvps += len(rows)
        return out[0] if single else out

    def _products(self, rows: torch.Tensor, batch: Any, index: int) -> torch.Tensor:
        """The batch's matrix times each row: J·v forward, the output-space matrix, Jᵀ·u back."""
        problem, criterion = self.problem, self.criterion
        inputs, targets = batch
        theta = problem.theta0.detach()

        def outputs_of(t: torch.Tensor) -> torch.Tensor:
            return call_model(problem.objective.model, inputs, problem.unflatten(t, prefix=""))

        outputs, pull = torch.func.vjp(outputs_of, theta)
        outputs = outputs.detach()
        if self.kind == GGN:  # H_out is symmetric: H_out·u is the pullback of ∇ℓ's linearisation
            _, output_hessian = torch.func.vjp(torch.func.grad(lambda o: criterion(o, targets)), outputs)

            def output_matrix(jv: torch.Tensor) -> torch.Tensor:
                return output_hessian(jv)[0]
        else:
            labels = [targets] if self.kind == EMPIRICAL_FISHER else self._drawn(outputs, index)
            grads = [_units(criterion, torch.func.grad(lambda o, y=y: criterion(o, y))(outputs))
                     for y in labels]
            count = grads[0].shape[0]

            def output_matrix(jv: torch.Tensor) -> torch.Tensor:
                # U Σ_u G_u (G_uᵀ (Jv)_u) over the draws, G_u = ∇_{o_u} L_b = s_u / U
                units = _units(criterion, jv)
                total = sum(g * (g * units).sum(dim=1, keepdim=True) for g in grads)
                return _from_units(criterion, total * (count / len(grads)), outputs)

        out = torch.empty_like(rows)
        for row, v in zip(out, rows):
            jv = torch.func.jvp(outputs_of, (theta,), (v,))[1]
            row.copy_(pull(output_matrix(jv))[0])
        return out

    def _drawn(self, outputs: torch.Tensor, index: int) -> list[torch.Tensor]:
        """The batch's sampled labels: drawn at its first product under (seed, batch), kept."""
        if index not in self._labels:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            self._labels[index] = [sampled_labels(self.criterion, outputs, generator)
                                   for _ in range(self.samples)]
        return self._labels[index]
