"""Which parameter each entry of an optimizer state belongs to (DESIGN §3).

torch numbers an optimizer's parameters by position, group after group. The names are known
where torch ≥ 2.6 kept them (``param_names``, an optimizer built from ``named_parameters``);
otherwise the positions follow one of the standard orders: ``model.parameters()``, or the
Hugging Face Trainer's two groups (the parameters it decays, then the others, each in model
order). An order is taken only when it fits every shape the state holds, and refused when two
orders fit with different meanings; ``optimizer.param_order`` settles it. The state of every
analysed parameter is then checked: present, of its shape, finite, and second moments ≥ 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape_cli.errors import CheckpointError
from landscape_cli.loading.matching import Match, remove_wrapper_parts
from landscape_cli.loading.optimizer_state import SGD, RawOptimizerState

#: ``optimizer.param_order``'s named orders (or a list of the parameters' names)
PARAM_ORDERS = ("auto", "names", "parameters", "trainer")
#: the parameters the Trainer does not decay: inside a LayerNorm, or a name matching one of these
#: (``Trainer.get_decay_parameter_names``; before transformers 4.45, only ``bias``)
TRAINER_NO_DECAY = ([r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"],
                    [r"bias"])
_FIX = "set optimizer.param_order (parameters, trainer, or the names in the optimizer's order)"


@dataclass(frozen=True)
class OptimizerState:
    """An optimizer state mapped to the model's parameters: its kind, each group's
    hyperparameters, and for each parameter (by the model's name) its group and state."""

    kind: str
    source: str
    #: how the entries were matched to parameters (param_names, model.parameters(), ...)
    order: str
    groups: list[dict[str, Any]]
    entries: dict[str, tuple[int, dict[str, Any]]]
    training: dict[str, Any] = field(default_factory=dict)

    def group_of(self, name: str) -> dict[str, Any]:
        return self.groups[self.entries[name][0]]


def _trainer_decayed(module: nn.Module, patterns: list[re.Pattern[str]]) -> list[str]:
    """The Trainer's decayed parameters: transformers' ``get_parameter_names(model,
    [nn.LayerNorm], patterns)``, the patterns searched in each lower-cased dotted name."""
    out = []
    for name, child in module.named_children():
        out += [f"{name}.{n}" for n in _trainer_decayed(child, patterns)
                if not isinstance(child, nn.LayerNorm)
                and not any(p.search(f"{name}.{n}".lower()) for p in patterns)]
    return out + [k for k in module._parameters if not any(p.search(k.lower()) for p in patterns)]


def _trainer_orders(raw: RawOptimizerState, model: nn.Module, named: list[str]) -> list[list[str]]:
    """The Trainer's order (decayed parameters, then the others) under each rule it has had,
    where its two groups have the sizes the rule gives."""
    if len(raw.groups) != 2:
        return []
    orders = []
    for rule in TRAINER_NO_DECAY:
        decayed = set(_trainer_decayed(model, [re.compile(p) for p in rule]))
        order = [n for n in named if n in decayed] + [n for n in named if n not in decayed]
        if len(raw.groups[0]["params"]) == sum(n in decayed for n in named) and order not in orders:
            orders.append(order)
    return orders


def _model_name(name: str, named: set[str], match: Match) -> str | None:
    """A ``param_names`` entry as the model names it: as is, without wrapper parts
    (``module.``, ``_orig_mod.``), or without the prefix the weights' keys lost."""
    for candidate in (name, remove_wrapper_parts(name)):
        if candidate in named:
            return candidate
        if match.prefix and candidate.startswith(match.prefix) and candidate[len(match.prefix):] in named:
            return candidate[len(match.prefix):]
    return None


def _candidates(raw: RawOptimizerState, model: nn.Module, match: Match,
                param_order: str | list[str]) -> list[tuple[str, list[str]]]:
    """(what the order is, the parameters' names in the state's positions) for each order that
    ``param_order`` allows."""
    named = [n for n, _ in model.named_parameters()]
    if isinstance(param_order, list):
        unknown = [n for n in param_order if n not in set(named)]
        if unknown:
            raise CheckpointError(f"optimizer.param_order names '{unknown[0]}', which is no parameter "
                                  "of the model")
        return [("optimizer.param_order", param_order)]
    if param_order == "names" or (param_order == "auto" and raw.names is not None):
        if raw.names is None:
            raise CheckpointError(f"{raw.source}: optimizer.param_order is names, but its groups keep "
                                  "no param_names (torch < 2.6, or built from parameters())")
        mapped = [_model_name(n, set(named), match) for n in raw.names]
        if None in mapped:
            missing = raw.names[mapped.index(None)]
            raise CheckpointError(f"{raw.source}: param_names entry '{missing}' is no parameter of the "
                                  f"model; {_FIX}")
        return [("param_names", mapped)]  # type: ignore[list-item]
    orders = []
    if param_order in ("auto", "parameters"):
        orders.append(("model.parameters()", named))
    if param_order in ("auto", "trainer"):
        orders += [("Trainer's decay/no-decay groups", order)
                   for order in _trainer_orders(raw, model, named)]
        if param_order == "trainer" and not orders:
            raise CheckpointError(f"{raw.source}: optimizer.param_order is trainer, but its groups "
                                  "are not the Trainer's two (decayed, then not decayed)")
    return orders


def _misfit(raw: RawOptimizerState, names: list[str], shapes: dict[str, torch.Size]) -> str | None:
    """Why ``names`` cannot be the parameters at the state's positions (None: they can): a
    count that differs, or a state tensor of another shape than its parameter."""
    positions = raw.positions
    if len(names) != len(positions):
        return (f"its {len(positions)} parameters are not the model's {len(shapes)} (parameters "
                "frozen in training, or another model?)")
    for index, name in zip(positions, names):
        for key, value in raw.state.get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shapes[name]:
                return (f"state entry {index} ('{key}' of shape {list(value.shape)}) does not fit "
                        f"parameter '{name}' {list(shapes[name])}")
    return None


def _required(kind: str, group: dict[str, Any]) -> tuple[str, ...]:
    """The state a parameter needs for the measures: Adam's moments and step (and its running
    maximum with amsgrad); SGD's momentum buffer where it has momentum and stepped once."""
    if kind == SGD:
        return ()
    return ("step", "exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if group.get("amsgrad") else ()))


def _checked_entry(raw: RawOptimizerState, order: str, name: str, group: dict[str, Any],
                   entry: dict[str, Any]) -> None:
    """One analysed parameter's state: complete, finite, second moments ≥ 0, step ≥ 1."""
    where = f"{raw.source}: parameter '{name}'"
    missing = [key for key in _required(raw.kind, group) if entry.get(key) is None]
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(missing)} in the state (it never got a "
                              f"gradient, or the {order} order is wrong); leave it out with --params "
                              f"or {_FIX}")
    for key, tensor in entry.items():
        if key == "step" or tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{where}: state '{key}' is not a floating tensor")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: state '{key}' holds non-finite values; give a sound state "
                                  "with --optimizer")
        if key in ("exp_avg_sq", "max_exp_avg_sq") and (tensor < 0).any():
            raise CheckpointError(f"{where}: state '{key}' holds negative second moments; give a sound "
                                  "state with --optimizer")
    step = float(torch.as_tensor(entry.get("step", 1)))
    if not (math.isfinite(step) and step >= 1 and step == int(step)):
        raise CheckpointError(f"{where}: state 'step' is {step:g}, not a step count ≥ 1")


def map_optimizer_state(raw: RawOptimizerState, model: nn.Module, match: Match, analysed: list[str],
                        param_order: str | list[str] = "auto") -> OptimizerState:
    """``raw`` mapped to ``model``'s parameters, the state of each ``analysed`` one checked."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    candidates = _candidates(raw, model, match, param_order)
    fitting = [(what, names) for what, names in candidates if _misfit(raw, names, shapes) is None]
    distinct = {tuple(names): what for what, names in fitting}
    if not fitting:
        what, names = candidates[0]
        raise CheckpointError(f"{raw.source}: in {what} order, {_misfit(raw, names, shapes)}; "
                              f"{_FIX}, or give the right state with --optimizer")
    if len(distinct) > 1:
        raise CheckpointError(f"{raw.source}: its parameters fit {' and '.join(distinct.values())} "
                              "orders, which differ; " + _FIX)
    what, names = fitting[0]
    group_of = {index: g for g, group in enumerate(raw.groups) for index in group["params"]}
    entries = {name: (group_of[index], raw.state.get(index, {}))
               for index, name in zip(raw.positions, names)}
    for name in analysed:
        if name not in entries:
            raise CheckpointError(f"{raw.source}: parameter '{name}' has no optimizer state (frozen "
                                  f"in training?); leave it out with --params or {_FIX}")
        g, entry = entries[name]
        _checked_entry(raw, what, name, raw.groups[g], entry)
    groups = [{k: v for k, v in group.items() if k not in ("params", "param_names")} for group in raw.groups]
    return OptimizerState(kind=raw.kind, source=raw.source, order=what, groups=groups,
                          entries=entries, training=raw.training)

