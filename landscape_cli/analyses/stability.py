"""Stability as the optimizer sees it: the curvature its next update feels, against the
threshold past which that update diverges (Cohen et al. 2022, "Adaptive gradient methods at
the edge of stability"), from the optimizer state the checkpoint holds.

On a quadratic with Hessian H, with the preconditioner held fixed, every supported update is
the heavy-ball family x' = x − η P⁻¹ m', m' = β m + κ (H + λ_c) x (less ηλ_d x for decoupled
weight decay). An eigenvalue of that linear map crosses −1 (the edge-of-stability
oscillation) exactly when R = W^½ (H + Λ_c) W^½ + ½EΛ_d has the eigenvalue 1, with
W = diag(η_g / (c_g p_i)) (Schur complement of M + I): per parameter, its group's learning
rate η_g, preconditioner p_i (1 for SGD; (1 − β₁ᵗ)(√v̂ᵢ + ε) for Adam) and threshold factor
c_g, the largest η·a a mode of curvature a stands:

* SGD: 2; heavy ball: (2 + 2μ)/(1 − τ) (dampening τ, the momentum buffer's gradient weight;
  Polyak 1964, Goh 2017 "Why momentum really works"); Nesterov (SGD's, no dampening):
  (2 + 2μ)/(1 + 2μ), by the same (Jury) criterion on its recurrence
  b' = μb + a·x, x' = x − η(a·x + μb');
* Adam/AdamW (EMA momentum, τ = β₁): (2 + 2β₁)/(1 − β₁), 38 at β₁ = 0.9 (Cohen et al. 2022).

``tests/analyses/test_stability.py`` checks each against torch.optim itself.

Coupled weight decay λ_c (SGD's, Adam's) is in the gradient, so the update sees H + λ_c I;
AdamW's decoupled λ_d shrinks θ outside the preconditioner, adding ½η_gλ_d to R. The report
keeps Cohen et al.'s form: ``preconditioned_lambda_max`` = λ_max(P̃^-½ (H + Λ_c) P̃^-½ + Λ̃_d)
and ``stability_threshold`` = c/η for the reference group (the largest learning rate), the
other groups' learning rates and factors folded into P̃ and Λ̃_d, so that their ratio is λ_max(R).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from landscape_cli.engine.problem import Problem
from landscape_cli.linalg.operator import LinearOperator, Wrapping, checked, product_error, rayleigh_error
from landscape_cli.loading.optimizer_params import OptimizerState
from landscape_cli.loading.optimizer_state import ADAMW, SGD


def threshold_factor(kind: str, group: dict[str, Any]) -> float:
    """c: the largest η·a at which a mode of curvature a (as the update sees it) is stable."""
    if kind != SGD:
        beta1 = group["betas"][0]
        return (2 + 2 * beta1) / (1 - beta1)
    mu = group.get("momentum", 0)
    if mu == 0:
        return 2.0
    if group.get("nesterov"):
        return (2 + 2 * mu) / (1 + 2 * mu)
    return (2 + 2 * mu) / (1 - group.get("dampening", 0))


def momentum_of(kind: str, group: dict[str, Any]) -> float:
    """β₁ for Adam, μ for SGD."""
    return group["betas"][0] if kind != SGD else group.get("momentum", 0)


def _adam_denominator(group: dict[str, Any], entry: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """p = (1 − β₁ᵗ)(√v̂ + ε), v̂ = v/(1 − β₂ᵗ) (v: the running maximum with amsgrad), at the
    state's step t: Adam's step divides m by it (Cohen et al. 2022, eq. 2)."""
    beta1, beta2 = group["betas"]
    t = float(torch.as_tensor(entry["step"]))
    v = entry["max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"].to(dtype)
    return (1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"])


@dataclass(frozen=True)
class Preconditioner:
    """How the next update sees the curvature, per coordinate of θ: the operator
    x ↦ s⊙(H + Λ_c)(s⊙x) + d⊙x whose λ_max is ``preconditioned_lambda_max``, and the
    reference threshold c/η."""

    kind: str
    lr: float
    threshold: float
    momentum: float
    #: P̃^-½
    scale: torch.Tensor
    #: s²λ_c + λ̃_d
    shift: torch.Tensor
    #: the optimizer's step count (Adam), None for SGD
    step: int | None


def learning_rates(state: OptimizerState, lr: float | None) -> list[float] | str:
    """Each group's learning rate: the state's, or scaled so that the largest is ``lr`` (every
    group taking ``lr`` where all are 0); or why there is none (all 0, no ``lr``)."""
    stored = [group["lr"] for group in state.groups]
    largest = max(stored)
    if lr is None:
        return stored if largest > 0 else ("every parameter group's learning rate is 0 (where a "
                                           "schedule starts or ends?); pass --lr")
    return [eta * lr / largest if largest > 0 else lr for eta in stored]


def preconditioner(state: OptimizerState, problem: Problem, lr: float | None = None) -> Preconditioner | str:
    """The preconditioner of ``state`` on ``problem``'s parameters (``lr``: the reference
    learning rate instead of the state's largest, the groups keeping their ratios, or all
    taking it where every one is 0); or why there is none (every learning rate 0, no ``lr``)."""
    kind = state.kind
    etas = learning_rates(state, lr)
    if isinstance(etas, str):
        return etas
    reference = state.groups[etas.index(max(etas))]
    eta_ref, c_ref = max(etas), threshold_factor(kind, reference)
    scales, shifts, steps = [], [], set()
    for name, shape in zip(problem.names, problem.shapes):
        g, entry = state.entries[name]
        group, eta = state.groups[g], etas[g]
        c = threshold_factor(kind, group)
        if kind == SGD:
            p = torch.ones(shape, dtype=torch.float64)
        else:
            p = _adam_denominator(group, entry, torch.float64).reshape(shape)
            steps.add(int(float(torch.as_tensor(entry["step"]))))
        # W = η/(c p) relative to the reference's η_ref/c_ref: P̃ = p (η_ref/η)(c/c_ref)
        weight = eta / (c * p) * (c_ref / eta_ref) if eta > 0 else torch.zeros(shape, dtype=torch.float64)
        decay = group.get("weight_decay", 0)
        decoupled = decay * eta * c_ref / (2 * eta_ref) if kind == ADAMW else 0.0
        coupled = 0.0 if kind == ADAMW else decay
        scales.append(weight.sqrt().reshape(-1))
        shifts.append((weight * coupled + decoupled).reshape(-1))
    dtype, device = problem.dtype, problem.device
    return Preconditioner(kind=kind, lr=eta_ref, threshold=c_ref / eta_ref,
                          momentum=momentum_of(kind, reference),
                          scale=torch.cat(scales).to(device=device, dtype=dtype),
                          shift=torch.cat(shifts).to(device=device, dtype=dtype),
                          step=max(steps) if steps else None)


@dataclass(frozen=True)
class PreconditionedHessian(Wrapping):
    """s⊙H(s⊙x) + d⊙x: the Hessian as the update sees it (``Preconditioner``), symmetric, so
    that Lanczos bounds its eigenvalues by residuals. A product's error is the Hessian's
    scaled by at most max(s)²."""

    operator: LinearOperator
    scale: torch.Tensor
    shift: torch.Tensor
    #: whole vectors (a sharded model does not run the optimizer's measures)
    shards = None

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        return self.scale * self.operator(self.scale * block) + self.shift * block

    def checked(self, block: torch.Tensor) -> torch.Tensor:
        return self.scale * checked(self.operator, self.scale * block) + self.shift * block

    def product_error(self) -> float:
        return product_error(self.operator) * float(self.scale.max()) ** 2

    def rayleigh_error(self) -> float:
        return rayleigh_error(self.operator) * float(self.scale.max()) ** 2

    def exact(self) -> PreconditionedHessian | None:
        exact = self.operator.exact()
        if exact is None:
            return None
        return PreconditionedHessian(exact, self.scale.to(exact.dtype), self.shift.to(exact.dtype))


def _optimizer_class(kind: str) -> type[torch.optim.Optimizer]:
    return {SGD: torch.optim.SGD, "Adam": torch.optim.Adam, ADAMW: torch.optim.AdamW}[kind]


#: torch.optim's implementation switches: the update is computed once, on the host's defaults
_PLAIN = {"foreach": False, "fused": None, "capturable": False, "differentiable": False}


def next_update(state: OptimizerState, problem: Problem, grad: torch.Tensor,
                etas: list[float]) -> torch.Tensor:
    """θ' − θ₀ for the step the optimizer would take next with gradient ``grad`` (flat, on
    ``problem``'s parameters) and the groups' learning rates ``etas``, by torch.optim itself on
    copies of θ₀ and of the state."""
    theta0 = problem.theta0
    params = [torch.nn.Parameter(p.detach().clone()) for p in problem.unflatten(theta0, prefix="").values()]
    for p, g in zip(params, problem.unflatten(grad.to(theta0), prefix="").values()):
        p.grad = g.detach().clone()
    members: list[list[int]] = [[] for _ in state.groups]
    for i, name in enumerate(problem.names):
        members[state.entries[name][0]].append(i)
    used = [g for g, m in enumerate(members) if m]
    hyper = [{**group, **_PLAIN, "lr": eta} for group, eta in zip(state.groups, etas)]
    groups = [{**hyper[g], "params": [params[i] for i in members[g]]} for g in used]
    optimizer = _optimizer_class(state.kind)(groups)
    order = [i for g in used for i in members[g]]
    optimizer.load_state_dict({
        "state": {k: {key: (v.clone() if isinstance(v, torch.Tensor) else v)
                      for key, v in state.entries[problem.names[i]][1].items() if v is not None}
                  for k, i in enumerate(order)},
        "param_groups": [{**hyper[g], "params": [order.index(i) for i in members[g]]}
                         for g in used]})
    optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in params]) - theta0
