"""Reading the optimizer state a checkpoint holds (DESIGN §3): untrusted data, like the weights.

It is found where training code puts it: a ``torch.save`` dict (``optimizer``,
``optimizer_state_dict``, ``optim``), Lightning's ``optimizer_states`` (with its
``lr_schedulers``), a Hugging Face Trainer folder (``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json``; never the pickled ``training_args.bin``), or a file of its own
(``--optimizer FILE``). Files are loaded with ``weights_only=True`` and tensors mapped, not read,
until used. Its structure and numbers are checked here, and which optimizer it is told from its
parameter groups' keys (torch's state dicts do not name their class): SGD and Adam/AdamW are
supported; any other is refused by name. Mapping it to the model's parameters is
``optimizer_params.py``'s job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from landscape_cli.errors import CheckpointError
from landscape_cli.loading.checkpoint import torch_load

#: where a training loop's dict keeps its optimizer's state, searched in order
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_states")
TRAINER_OPTIMIZER, TRAINER_SCHEDULER, TRAINER_STATE = "optimizer.pt", "scheduler.pt", "trainer_state.json"
#: trainer_state.json is a small text file: anything larger is not one
MAX_TRAINER_STATE_BYTES = 64 << 20
SGD, ADAM, ADAMW = "SGD", "Adam", "AdamW"
#: parameter-group keys that tell torch's optimizers apart (none of them names its class)
_SGD_KEYS = {"momentum", "dampening", "nesterov"}
_ADAM_KEYS = {"betas", "eps", "amsgrad"}
_ADAM_STATE = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
#: the keys (group keys, or per-parameter state keys) that give away the unsupported ones
_OTHERS = (("NAdam", {"momentum_decay"}), ("RMSprop", {"alpha", "centered"}),
           ("Adagrad", {"lr_decay"}), ("Adadelta", {"rho"}), ("ASGD", {"lambd", "t0"}),
           ("Rprop", {"etas", "step_sizes"}), ("LBFGS", {"history_size"}),
           ("Adafactor", {"beta2_decay"}), ("Adamax", {"exp_inf"}),
           ("an 8-bit (bitsandbytes) optimizer", {"state1", "qmap1"}), ("Lion", {"betas_lion"}))


@dataclass(frozen=True)
class RawOptimizerState:
    """An optimizer's state dict as found, checked in structure: its kind (``SGD``, ``Adam``,
    ``AdamW``), its parameter groups (hyperparameters, ``params`` positions, ``param_names``
    where torch ≥ 2.6 kept them) and per-parameter state by position."""

    source: str
    kind: str
    groups: list[dict[str, Any]]
    state: dict[int, dict[str, Any]]
    #: what else the checkpoint says about training: the Trainer's ``global_step`` and
    #: ``train_batch_size``, a scheduler's last learning rates
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> list[int]:
        """Every parameter's index in the state, group after group."""
        return [index for group in self.groups for index in group["params"]]

    @property
    def names(self) -> list[str] | None:
        """The parameters' names, group after group, where every group kept them."""
        if not all("param_names" in group for group in self.groups):
            return None
        return [name for group in self.groups for name in group["param_names"]]

    def describe(self) -> dict[str, Any]:
        """What ``inspect`` shows: the kind, each group's hyperparameters and size, the step."""
        steps = {_number(s["step"]) for s in self.state.values() if "step" in s}
        groups = [{k: _shown(v) for k, v in g.items() if k not in ("params", "param_names")}
                  | {"n_tensors": len(g["params"])} for g in self.groups]
        return {"source": self.source, "type": self.kind, "param_groups": groups,
                "n_states": len(self.state), "param_names": self.names is not None,
                **({"step": max(steps)} if steps else {}), **self.training}


class UnsupportedOptimizer(CheckpointError):
    """The state is an optimizer other than SGD and Adam/AdamW (named in the message)."""


def _shown(value: Any) -> Any:
    """A hyperparameter as a report can hold it: a number, string or list of them, else its
    type's name (a file's groups may hold anything weights_only lets through)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return f"<{type(value).__name__}>"


def _number(value: Any) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _loaded(path: Path, allow_globals: Sequence[str], trust: bool) -> Any:
    return torch_load(path, allow_globals, trust, mmap=True)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _find(obj: Any, key: str, path: Path) -> tuple[str, Any] | None:
    """(where, the optimizer state dict) in a loaded object: ``key`` (a dotted path; an integer
    part indexes a list) or, for ``auto``, the object itself or the first of ``OPTIMIZER_KEYS``
    that holds one. Lightning keeps a list, one per optimizer: several are ambiguous."""
    if key != "auto":
        node: Any = obj
        for part in key.split("."):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise CheckpointError(f"{path}: optimizer.key '{key}' not found")
        return key, node
    if _is_state_dict(obj):
        return "", obj
    if not isinstance(obj, Mapping):
        return None
    for name in OPTIMIZER_KEYS:
        found = obj.get(name)
        if isinstance(found, list):
            if len(found) > 1:
                raise CheckpointError(f"{path}: '{name}' holds {len(found)} optimizers; choose one "
                                      f"with optimizer.key: {name}.0 (or .1, ...)")
            found, name = (found[0], f"{name}.0") if found else (None, name)
        if found is not None:
            return name, found
    return None


def _checked_groups(groups: Any, where: str) -> list[dict[str, Any]]:
    """The parameter groups: a non-empty list of mappings, each with a list of distinct integer
    positions (and ``param_names`` as many strings, where present), every number finite."""
    if not isinstance(groups, list) or not groups or not all(isinstance(g, Mapping) for g in groups):
        raise CheckpointError(f"{where}: 'param_groups' is not a non-empty list of parameter groups")
    seen: set[int] = set()
    out = []
    for i, group in enumerate(groups):
        params = group.get("params")
        if not isinstance(params, list) or not all(type(p) is int and p >= 0 for p in params):
            raise CheckpointError(f"{where}: param_groups[{i}]['params'] is not a list of parameter "
                                  "indices")
        if seen & set(params) or len(set(params)) != len(params):
            raise CheckpointError(f"{where}: param_groups[{i}] lists a parameter index twice")
        seen |= set(params)
        names = group.get("param_names")
        if names is not None and (not isinstance(names, list) or len(names) != len(params)
                                  or not all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{where}: param_groups[{i}]['param_names'] does not name its "
                                  f"{len(params)} parameters")
        hyper = {}
        for name, value in group.items():
            if name in ("params", "param_names"):
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:  # a tensor lr
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                raise CheckpointError(f"{where}: param_groups[{i}]['{name}'] is {value}")
            hyper[name] = value
        out.append({**hyper, "params": params, **({"param_names": names} if names else {})})
    return out


def _checked_state(state: Any, positions: set[int], where: str) -> dict[int, dict[str, Any]]:
    """Per-parameter state: integer positions that some group lists, each a mapping of names to
    tensors or numbers."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: 'state' is not a mapping of parameter index to state")
    out = {}
    for index, entry in state.items():
        if type(index) is not int or index not in positions:
            raise CheckpointError(f"{where}: state entry {index!r} belongs to no parameter group")
        if not isinstance(entry, Mapping) or not all(
                isinstance(k, str) and (isinstance(v, (torch.Tensor, int, float)) or v is None)
                for k, v in entry.items()):
            raise CheckpointError(f"{where}: state entry {index} is not a mapping of names to tensors")
        out[index] = dict(entry)
    return out


def _kind(groups: list[dict[str, Any]], state: dict[int, dict[str, Any]], told: str, where: str) -> str:
    """SGD, Adam or AdamW, from the groups' keys (``told``: optimizer.type, where the keys
    cannot say: a torch < 2.6 AdamW has Adam's keys); another optimizer is refused by name."""
    state_keys = set().union(*(s.keys() for s in state.values()))
    keys = set().union(*(g.keys() for g in groups)) | state_keys
    other = next((name for name, marks in _OTHERS if marks & keys), None)
    if other is None and keys >= _SGD_KEYS and state_keys <= {"momentum_buffer"}:
        kind = SGD
    elif other is None and keys >= _ADAM_KEYS and state_keys <= _ADAM_STATE:
        decoupled = {bool(g.get("decoupled_weight_decay")) for g in groups if "decoupled_weight_decay" in g}
        if len(decoupled) > 1:
            raise CheckpointError(f"{where}: its groups mix Adam and AdamW weight decay")
        weight_decay = any(_number(g.get("weight_decay", 0)) for g in groups)
        if decoupled:
            kind = ADAMW if decoupled.pop() else ADAM
        elif told in (ADAM.lower(), ADAMW.lower()):
            kind = ADAMW if told == ADAMW.lower() else ADAM
        elif not weight_decay:
            kind = ADAM  # without weight decay Adam and AdamW are one optimizer
        else:
            raise CheckpointError(f"{where}: Adam or AdamW? Its groups (saved by torch < 2.6) do not "
                                  "say, and their weight decay differs; set optimizer.type: adamw "
                                  "or adam")
    else:
        named = other or "an optimizer with param-group keys " + ", ".join(
            sorted(k for k in keys if k not in ("params", "param_names", "lr", "weight_decay")))
        raise UnsupportedOptimizer(f"{where}: the optimizer state is {named}; the stability "
                                   "measures support SGD and Adam/AdamW")
    if told != "auto" and told != kind.lower():
        raise CheckpointError(f"{where}: optimizer.type is {told}, but the state is {kind}'s")
    if any(g.get("maximize") for g in groups):
        raise CheckpointError(f"{where}: the optimizer maximizes (maximize=True); the stability "
                              "measures are for descent")
    return kind


def _checked_hyperparameters(kind: str, groups: list[dict[str, Any]], where: str) -> None:
    """Each group's hyperparameters in their ranges: a number the measures divide by or raise
    to a power is never taken on trust."""
    def bad(i: int, name: str, why: str) -> CheckpointError:
        return CheckpointError(f"{where}: param_groups[{i}]['{name}'] {why}")

    for i, g in enumerate(groups):
        numbers = ["lr", "weight_decay"] + (["momentum", "dampening"] if kind == SGD else ["eps"])
        for name in numbers:
            value = g.get(name, 0)
            if type(value) not in (int, float) or value < 0:
                raise bad(i, name, f"is {value!r}, not a number ≥ 0")
        if kind == SGD and not (g.get("momentum", 0) < 1 and g.get("dampening", 0) < 1):
            raise bad(i, "momentum", "and dampening must be below 1")
        if kind == SGD and g.get("nesterov") and (g.get("momentum", 0) == 0 or g.get("dampening", 0)):
            raise bad(i, "nesterov", "needs momentum and no dampening (as torch.optim.SGD does)")
        if kind != SGD:
            betas = g.get("betas")
            if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                    or not all(type(b) in (int, float) and 0 <= b < 1 for b in betas)):
                raise bad(i, "betas", f"is {betas!r}, not two numbers in [0, 1)")


def _trainer_training(folder: Path) -> dict[str, Any]:
    """The Trainer's ``global_step`` and ``train_batch_size`` (trainer_state.json, text) and the
    scheduler's last learning rates (scheduler.pt, weights only), where present."""
    out: dict[str, Any] = {}
    state_file = folder / TRAINER_STATE
    if state_file.is_file():
        try:
            with state_file.open("rb") as handle:
                doc = json.loads(handle.read(MAX_TRAINER_STATE_BYTES))
        except (OSError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"{state_file}: not a valid trainer state ({type(exc).__name__})") from None
        if isinstance(doc, Mapping):
            out |= {k: doc[k] for k in ("global_step", "train_batch_size")
                    if type(doc.get(k)) is int and doc[k] >= 0}
    return out


def _scheduler_lrs(obj: Any) -> list[float] | None:
    """A scheduler state's last learning rates (``_last_lr``), where it has finite ones."""
    last = obj.get("_last_lr") if isinstance(obj, Mapping) else None
    if isinstance(last, list) and last and all(type(x) in (int, float) and math.isfinite(x) for x in last):
        return [float(x) for x in last]
    return None


def read_optimizer_state(checkpoint: str | Path, file: str | Path | None = None, *,
                         key: str = "auto", told: str = "auto", allow_globals: Sequence[str] = (),
                         trust: bool = False) -> RawOptimizerState | None:
    """The optimizer state of ``checkpoint`` (or of ``file``, ``--optimizer``), checked; None
    where the checkpoint holds none. ``key``: optimizer.key; ``told``: optimizer.type."""
    checkpoint = Path(checkpoint)
    training: dict[str, Any] = {}
    schedulers: Any = None
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise CheckpointError(f"{path}: optimizer state file not found (given with --optimizer)")
        obj = _loaded(path, allow_globals, trust)
    elif checkpoint.is_dir():
        path = checkpoint / TRAINER_OPTIMIZER
        if not path.is_file():
            return None
        obj = _loaded(path, allow_globals, trust)
        training = _trainer_training(checkpoint)
        if (checkpoint / TRAINER_SCHEDULER).is_file():
            try:  # the scheduler only confirms the learning rates: one it cannot read is left out
                schedulers = [_loaded(checkpoint / TRAINER_SCHEDULER, allow_globals, trust)]
            except CheckpointError:
                schedulers = None
    elif checkpoint.suffix == ".safetensors":
        return None  # tensors only
    else:
        path = checkpoint
        obj = _loaded(path, allow_globals, trust)
        if isinstance(obj, Mapping) and isinstance(obj.get("lr_schedulers"), list):
            schedulers = obj["lr_schedulers"]
    found = _find(obj, key, path)
    if found is None:
        if file is not None:
            raise CheckpointError(f"{path}: no optimizer state in it (a dict with 'state' and "
                                  f"'param_groups', or under one of {', '.join(OPTIMIZER_KEYS)}); "
                                  "set optimizer.key")
        return None
    where_key, state_dict = found
    lrs = next((found for s in schedulers or [] if (found := _scheduler_lrs(s))), None)
    if lrs is not None:
        training["scheduler_last_lr"] = lrs
    return checked_state_dict(state_dict, f"{path}" + (f" ['{where_key}']" if where_key else ""),
                              told=told, training=training)


def checked_state_dict(state_dict: Any, where: str, *, told: str = "auto",
                       training: dict[str, Any] | None = None) -> RawOptimizerState:
    """An optimizer's ``state_dict()`` checked in structure and numbers, its kind told."""
    if not _is_state_dict(state_dict):
        raise CheckpointError(f"{where}: not an optimizer state dict ('state' and 'param_groups')")
    groups = _checked_groups(state_dict["param_groups"], where)
    state = _checked_state(state_dict["state"], {p for g in groups for p in g["params"]}, where)
    kind = _kind(groups, state, told, where)
    _checked_hyperparameters(kind, groups, where)
    return RawOptimizerState(source=where, kind=kind, groups=groups, state=state, training=training or {})


def live_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> RawOptimizerState:
    """A live optimizer's state, its parameters named by identity with ``model``'s (so no order
    is guessed); the state's tensors are the optimizer's own, only read."""
    names = {id(p): n for n, p in model.named_parameters()}
    state_dict = optimizer.state_dict()
    for group, live in zip(state_dict["param_groups"], optimizer.param_groups):
        missing = [p for p in live["params"] if id(p) not in names]
        if missing:
            raise CheckpointError(f"the optimizer holds a parameter of shape {list(missing[0].shape)} "
                                  "that is not the model's")
        group["param_names"] = [names[id(p)] for p in live["params"]]
    return checked_state_dict(state_dict, f"the live {type(optimizer).__name__}")
