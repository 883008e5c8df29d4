"""Options, declared once for the CLI and the Python API alike: a command's own options are
the keyword parameters of its function, ``Annotated[type, Option(...)]``, and the options
every analysis shares are the fields of ``RunOptions``. The CLI turns the declarations into
Typer parameters; the runner checks values against them, so that a bad value gets the same
one-line error from ``landscape`` and from ``landscape_cli.analyze``. Torch-free: ``--help``
reads this."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from landscape_cli.errors import LandscapeError
from landscape_cli.names import FSDP, PRECISIONS, STRATEGIES


@dataclass(frozen=True)
class Option:
    """How an option is spelled and checked: its help, its flags (default ``--name``; a
    ``--yes/--no`` pair for a boolean switch), the least value it takes, the values it
    chooses from, and the help panel it shows in."""

    help: str
    flags: tuple[str, ...] = ()
    min: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    panel: str | None = None


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def declared(fn: Callable[..., Any], skip: int = 1) -> dict[str, tuple[Any, Option, Any]]:
    """name → (type, Option, default) of ``fn``'s keyword options (after its first ``skip``
    parameters)."""
    out = {}
    for name, param in list(inspect.signature(fn).parameters.items())[skip:]:
        annotation = param.annotation
        if isinstance(annotation, str):  # postponed (``from __future__ import annotations``)
            annotation = eval(annotation, fn.__globals__)
        kind, *meta = typing.get_args(annotation)
        option = next(m for m in meta if isinstance(m, Option))
        out[name] = (kind, option, param.default)
    return out


def check(name: str, value: Any, option: Option) -> Any:
    """``value`` for option ``name`` as the command takes it (an Enum's value as its string),
    or a one-line error naming the option: not finite, below ``min``, not one of ``choices``."""
    if isinstance(value, Enum):
        value = value.value
    shown = flag(name)
    if isinstance(value, float) and not math.isfinite(value):
        raise LandscapeError(f"{shown} {value}: must be a finite number")
    if option.min is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value < option.min:
        raise LandscapeError(f"{shown} {value}: must be greater than or equal to {option.min:g}")
    if option.choices and value is not None and value not in option.choices:
        raise LandscapeError(f"{shown} {value}: must be one of {', '.join(option.choices)}")
    return value


def checked(fn: Callable[..., Any], values: dict[str, Any], skip: int = 1) -> dict[str, Any]:
    """Every option of ``fn``: the given ``values`` checked, the rest at their defaults;
    an option ``fn`` does not have is an error naming the ones it has."""
    options = declared(fn, skip)
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise LandscapeError(f"{', '.join(flag(u) for u in unknown)}: no such option "
                             f"(this command has: {', '.join(flag(o) for o in options)})")
    return {name: check(name, _typed(kind, values.get(name, default)), option)
            for name, (kind, option, default) in options.items()}


def _typed(kind: Any, value: Any) -> Any:
    """A path given as a string (from Python) as the ``Path`` the option declares."""
    if isinstance(value, str) and (kind is Path or Path in typing.get_args(kind)):
        return Path(value)
    return value


def jsonable(value: Any) -> Any:
    """An option's value as the report records it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_INPUT, _ENGINE, _OUTPUT = "Input", "Engine", "Output"

#: ``--bootstrap`` and ``--bootstrap-unit``, as spectrum, trace and sharpness declare them
BOOTSTRAP = Option("Resample the data with replacement this many times (under the seed) and report "
                   "each number's data_ci95 beside its numerical error; 0: none.", min=0)
BOOTSTRAP_UNIT = Option("What --bootstrap resamples: the data's batches, or its samples (into "
                        "batches of the same sizes; data held in one process).",
                        choices=("batch", "sample"))


@dataclass
class RunOptions:
    """The options every analysis command shares: where the config and data come from, how
    the engine runs, and the gates. Each field's ``Option`` is in ``RUN_OPTIONS``."""

    config: Path | None = None
    set: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    precision: str | None = None
    seed: int | None = None
    bn: str | None = None
    key: str | None = None
    params: list[str] = field(default_factory=list)
    batches: int | None = None
    hvp_strategy: str | None = None
    memory_budget: str | None = None
    compile: bool | None = None
    allow_global: list[str] = field(default_factory=list)
    trust_checkpoint: bool = False
    optimizer: Path | None = None
    dist_timeout: float | None = None
    shard_model: bool = False
    fail_if: list[str] = field(default_factory=list)

    def flags(self) -> dict[str, tuple[str, Any]]:
        """The dedicated flags given, as config key → (the flag as typed, its value)."""
        given = {"device": ("--device", self.device), "dtype": ("--dtype", self.dtype),
                 "seed": ("--seed", self.seed), "bn": ("--bn", self.bn),
                 "checkpoint.key": ("--key", self.key),
                 "engine.strategy": ("--hvp-strategy", self.hvp_strategy),
                 "engine.memory_budget": ("--memory-budget", self.memory_budget),
                 "engine.compile": ("--compile" if self.compile else "--no-compile", self.compile),
                 "precision": ("--precision", self.precision)}
        out = {key: (f"{flag} {value}" if not isinstance(value, bool) else flag, value)
               for key, (flag, value) in given.items() if value is not None}
        if self.shard_model:
            out["engine.shard"] = ("--shard-model", FSDP)
        implied = PRECISIONS.get(str(self.precision))
        if self.dtype is None and implied is not None:  # the flag sets the weights' dtype too
            out["dtype"] = (out["precision"][0], implied)
        return out

    @classmethod
    def of(cls, values: dict[str, Any]) -> RunOptions:
        """Checked ``RunOptions`` from keyword values (Enums as their strings)."""
        return cls(**{name: check(name, value, RUN_OPTIONS[name]) for name, value in values.items()})


#: How each shared option is spelled and checked (``RunOptions`` holds the values).
RUN_OPTIONS: dict[str, Option] = {
    "config": Option("Config YAML (default: $LANDSCAPE_CONFIG, then landscape.yaml beside the "
                     "checkpoint or in a parent folder, then in the working directory).",
                     flags=("--config", "-c"), panel=_INPUT),
    "set": Option("Override a config key, e.g. --set data.batch_size=64 (repeatable).",
                  metavar="KEY=VALUE", panel=_INPUT),
    "device": Option("auto | cpu | cuda | cuda:N (overrides the config).", panel=_ENGINE),
    "dtype": Option("float32 | float64 (overrides the config).", panel=_ENGINE),
    "precision": Option("How the passes run: 32 | 64 | bf16-mixed | 16-mixed (Lightning's "
                        "names; mixed: float32 weights, forward and backward under autocast). "
                        "Sets dtype too, unless --dtype is given (overrides the config).",
                        panel=_ENGINE),
    "seed": Option("Seed of every random choice (overrides the config).", panel=_ENGINE),
    "bn": Option("BatchNorm policy: eval (running stats) | train-stats (batch stats, buffers "
                 "kept).", panel=_ENGINE),
    "key": Option("Where the weights are in the checkpoint file: a key such as model, ema or "
                  "state_dict (overrides checkpoint.key; default auto).", panel=_INPUT),
    "params": Option("Analyse only parameters whose name matches this glob, e.g. 'layer3.*' "
                     "(repeatable).", metavar="GLOB", panel=_INPUT),
    "batches": Option("Use only the first N batches of the data.", min=1, panel=_INPUT),
    "hvp_strategy": Option("HVP engine strategy: auto (default) keeps the first-order graph "
                           "('cached') when it fits half the memory budget, else streams batches "
                           "('stream'), and goes 'fd' where exact products fail; 'fd': finite "
                           "differences of gradients, with their measured error in the "
                           "residuals (no double backward: fused attention kernels, custom "
                           "ops).", choices=STRATEGIES, panel=_ENGINE),
    "memory_budget": Option("Memory the cached graph and then the algorithms' vectors (Krylov "
                            "bases, sketches) may hold, e.g. 8GB or 512MiB (0: always stream, "
                            "the fewest vectors). Default: half the GPU's memory, or 40% of the "
                            "RAM (what the machine has, not what is free now).", metavar="SIZE",
                            panel=_ENGINE),
    "compile": Option("torch.compile the streaming HVP (first call compiles; pays off over many "
                      "HVPs on large models). Implies stream unless --hvp-strategy cached.",
                      flags=("--compile/--no-compile",), panel=_ENGINE),
    "allow_global": Option("Let weights_only unpickling accept this global (repeatable).",
                           metavar="MODULE.NAME", panel=_INPUT),
    "trust_checkpoint": Option("Unpickle with weights_only=False: the file can run code. Only "
                               "for files you trust.", flags=("--trust-checkpoint",), panel=_INPUT),
    "optimizer": Option("The optimizer state, when the checkpoint does not hold it: a torch file "
                        "(weights_only) with an optimizer state dict, alone or under optimizer / "
                        "optimizer_state_dict / optim / optimizer_states (the stability measures).",
                        metavar="FILE", panel=_INPUT),
    "dist_timeout": Option("Under torchrun: seconds a rank waits for the others before it stops "
                           "with an error (default 600).", min=1, metavar="SECONDS",
                           panel=_ENGINE),
    "shard_model": Option("Under torchrun: shard the model over the ranks with FSDP2 (each "
                          "repeated block, then the root), vectors held as shards; products by "
                          "finite differences (engine.shard: fsdp).", flags=("--shard-model",),
                          panel=_ENGINE),
    "fail_if": Option("Exit 1 if this holds, e.g. 'lambda_max>50' (repeatable).",
                      metavar="EXPR", panel=_OUTPUT),
}


def run_option_types() -> dict[str, tuple[Any, Option, Any]]:
    """name → (type, Option, default) of the shared options, in declaration order."""
    hints = typing.get_type_hints(RunOptions)
    out = {}
    for f in fields(RunOptions):
        default = [] if f.default_factory is list else f.default  # type: ignore[comparison-overlap]
        out[f.name] = (hints[f.name], RUN_OPTIONS[f.name], default)
    return out
