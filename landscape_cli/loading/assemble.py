"""From a config to a model (the factory, in the analysis dtype) and a checkpoint's weights loaded
into it: matched, converted, checked, with what the report says about it. Nothing here knows
the engine; ``session.py`` builds the problem from these parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape_cli.config import Config
from landscape_cli.errors import CheckpointError, ConfigError
from landscape_cli.loading.checkpoint import Checkpoint
from landscape_cli.loading.factory import call
from landscape_cli.loading.matching import Match, match_state_dict

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class LoadOptions:
    """Command-line choices that shape the problem (beyond the config)."""

    params: Sequence[str] = ()
    max_batches: int | None = None
    allow_globals: Sequence[str] = ()
    trust_checkpoint: bool = False
    #: ``--optimizer``: the optimizer state's own file
    optimizer: Path | None = None
    #: under torchrun, how long a rank waits for the others (seconds)
    dist_timeout: float = 600.0


def build_model(config: Config) -> nn.Module:
    model = call(config.model.factory, config.model.kwargs, config.source, "model.factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(config.source, "model.factory",
                          f"returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, checkpoint: Checkpoint, config: Config,
                 factory_state: Mapping[str, torch.Tensor] | None = None,
                 tied: Sequence[Sequence[str]] = ()) -> Match:
    """Match the checkpoint's keys to the model's (prefixes, strictness, shapes, dtypes, tied
    parameters) and load them into the model held in the analysis dtype, so that a float64
    checkpoint analysed in float64 keeps every digit; non-finite weights are refused.

    ``factory_state``: the state the factory built, for a model that already held another
    checkpoint's weights: keys are matched against it (as the factory made them, whatever
    the BatchNorm policy removed since) and the keys a checkpoint lacks go back to it."""
    spec = config.checkpoint
    reference = model.state_dict() if factory_state is None else factory_state
    match = match_state_dict(checkpoint.tensors, reference, spec.strip_prefix,
                             spec.strict, source=str(checkpoint.path), tied=tied)
    model.to(DTYPES[config.dtype])
    restored = {name: reference[name] for name in match.missing} if factory_state is not None else {}
    model.load_state_dict({**restored, **match.tensors}, strict=False)
    _refuse_non_finite(model, match, checkpoint.path)
    return match


def _non_finite(tensor: torch.Tensor) -> list[str]:
    """Which non-finite values (``nan``, ``inf``) a tensor holds; none for integers."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or torch.isfinite(tensor).all():
        return []
    return [word for word, test in (("nan", torch.isnan), ("inf", torch.isinf))
            if test(tensor).any()]


def _refuse_non_finite(model: nn.Module, match: Match, path: Path) -> None:
    """A NaN or Inf in any floating tensor the model takes from the checkpoint (parameter or
    buffer) makes every loss meaningless: the first one is named before any analysis runs.
    The values checked are those loaded, so a float64 value that overflows float32 counts."""
    state = model.state_dict()
    for name, original in match.tensors.items():
        found = _non_finite(state[name]) if name in state else []
        if found:
            overflow = "" if _non_finite(original) else (
                f" once converted from {original.dtype} to {state[name].dtype}")
            raise CheckpointError(f"{path}: weight '{name}' holds non-finite values ({', '.join(found)})"
                                  f"{overflow}, so the loss is not finite")


def key_warnings(checkpoint: Checkpoint) -> list[str]:
    """Say which of several state dicts in one file ``checkpoint.key: auto`` took."""
    if not checkpoint.other_keys:
        return []
    return [f"checkpoint.key auto took the weights under '{checkpoint.key}'; the file also "
            f"holds {', '.join(repr(k) for k in checkpoint.other_keys)} (choose with --key)"]


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def match_warnings(match: Match) -> list[str]:
    out: list[str] = []
    for label, names in (("missing from the checkpoint (left at the factory's values)", match.missing),
                         ("in the checkpoint but not in the model (ignored)", match.unexpected),
                         (f"outside the stripped prefix '{match.prefix}' (ignored)", match.ignored)):
        if names:
            out.append(f"{len(names)} key(s) {label}: {_shown(names)}")
    return out


def conversion_warnings(match: Match, dtype: torch.dtype) -> list[str]:
    """One warning listing the dtype conversions loading made, by pair of dtypes: a float16
    checkpoint analysed in float32 works, but the file's numbers are not analysed as they are.

    Floating weights are loaded in the analysis dtype: a checkpoint already in it is loaded
    exactly, and one in the model's own dtype is analysed in the dtype the user chose (both
    unreported: ``match.converted`` only holds tensors whose dtype is not the model's)."""
    groups: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for name, got, want in match.converted:
        target = dtype if want.is_floating_point else want
        if got != target:
            groups.setdefault((got, target), []).append(name)
    if not groups:
        return []
    pairs = [f"{str(got).removeprefix('torch.')} to {str(target).removeprefix('torch.')} for "
             f"{len(names)} tensor(s): {_shown(names)}" for (got, target), names in groups.items()]
    return [f"checkpoint tensors converted to the model's dtype: {'; '.join(pairs)}"]


def describe_checkpoint(ckpt: Checkpoint, match: Match, n_model_params: int) -> dict[str, Any]:
    """The report's ``checkpoint`` section."""
    out: dict[str, Any] = {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256(),
        "format": ckpt.format,
        "n_params": n_model_params,
        "key": ckpt.key,
        "stripped_prefix": match.stripped or None,
        **({"tied": [list(pair) for pair in match.tied]} if match.tied else {}),
    }
    out.update({k.replace("-", "_"): v for k, v in ckpt.metadata.items()})
    return out
