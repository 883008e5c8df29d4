"""Matching checkpoint keys to a model's keys: wrapper prefixes, missing/unexpected/mis-shaped.

``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile), ``_fsdp_wrapped_module.``
and ``_checkpoint_wrapped_module.`` (FSDP / activation checkpointing) are wrapper names
that never belong to a model's own keys: they are removed wherever they occur. A remaining
leading prefix (a Lightning attribute such as ``model.``) is stripped when exactly one
choice makes the most keys match the model.

Tied weights (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) are one tensor under
several keys; ``save_pretrained`` keeps one of them, so a key tied to one the checkpoint holds
is not missing: it takes that key's tensor.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from landscape_cli.errors import CheckpointError

WRAPPER_PARTS = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def remove_wrapper_parts(key: str, keep: Collection[str] = ()) -> str:
    """Drop wrapper components (``module.``, ``_orig_mod.``, ...) from a dotted key,
    except those in ``keep`` (names the model itself uses)."""
    parts = key.split(".")
    kept = [p for p in parts[:-1] if p not in WRAPPER_PARTS or p in keep]
    return ".".join([*kept, parts[-1]])


def _candidate_prefixes(keys: Collection[str], depth: int = 3) -> set[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for i in range(1, min(depth, len(parts) - 1) + 1):
            found.add(".".join(parts[:i]) + ".")
    return found


def _strip(keys: Collection[str], prefix: str) -> dict[str, str]:
    """new key -> old key, keeping only the keys under ``prefix``."""
    return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}


def detect_prefix(ckpt_keys: Collection[str], model_keys: Collection[str],
                  source: str = "checkpoint") -> str:
    """The leading prefix whose removal makes the most checkpoint keys match the model.

    No prefix wins ties with it; a tie between two real prefixes is ambiguous (an error).
    """
    model = set(model_keys)
    scores = {p: len(model & _strip(ckpt_keys, p).keys()) for p in _candidate_prefixes(ckpt_keys)}
    best = max(scores.values())
    winners = sorted(p for p, s in scores.items() if s == best)
    if best == 0 or "" in winners or len(winners) == 1:
        return "" if best == 0 or "" in winners else winners[0]
    hint = ("; is it a checkpoint of another model?" if best < len(model) / 2 else "")
    raise CheckpointError(
        f"{source}: cannot tell which prefix to strip: {', '.join(repr(w) for w in winners)} "
        f"each match {best} of the model's {len(model)} keys{hint} (or set "
        "checkpoint.strip_prefix)"
    )


@dataclass
class Match:
    """Checkpoint tensors renamed to the model's keys, and what did not fit."""

    tensors: dict[str, torch.Tensor]
    prefix: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    converted: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    wrappers: list[str] = field(default_factory=list)
    # (model key, model key whose checkpoint tensor it took): tied keys the checkpoint
    # lacks, or whose value lost a conflict within its group (non-strict only).
    tied: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stripped(self) -> str:
        """What was removed from the checkpoint's keys, in words: '' when nothing."""
        return " + ".join([*(w + "." for w in self.wrappers), *([self.prefix] if self.prefix else [])])


def _listed(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def tied_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """The sorted groups (two keys or more) of state-dict keys naming one and the same
    parameter or buffer object: ties by identity, never by equal values."""
    keys_by_object: dict[int, list[str]] = {}
    # keep_vars: the Parameter objects themselves, whose identity is the tie (plain
    # state_dict() gives fresh detached tensors). They stay alive while the dict does.
    for key, value in model.state_dict(keep_vars=True).items():
        keys_by_object.setdefault(id(value), []).append(key)
    return sorted(tuple(sorted(keys)) for keys in keys_by_object.values() if len(keys) > 1)


def match_state_dict(tensors: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                     strip_prefix: str = "auto", strict: bool = True, source: str = "checkpoint",
                     tied: Sequence[Collection[str]] = ()) -> Match:
    """Rename checkpoint keys to the model's; in ``strict`` mode any misfit is an error.

    ``tied`` (from ``tied_groups``): a model key the checkpoint lacks takes the tensor of a
    key tied to it that the checkpoint holds (see ``_tie``)."""
    own_parts = {part for key in model_state for part in key.split(".")[:-1]}
    cleaned: dict[str, str] = {}
    for key in tensors:
        new = remove_wrapper_parts(key, keep=own_parts)
        if new in cleaned:
            raise CheckpointError(f"{source}: keys '{cleaned[new]}' and '{key}' collide "
                                  "once wrapper prefixes are removed")
        cleaned[new] = key
    if strip_prefix == "auto":
        prefix = detect_prefix(cleaned, model_state, source)
    else:
        prefix = "" if strip_prefix in ("", "none") else strip_prefix.rstrip(".") + "."
    renamed = {new: cleaned[mid] for new, mid in _strip(cleaned, prefix).items()}
    ignored = sorted(cleaned[k] for k in cleaned if not k.startswith(prefix))
    out = {new: tensors[old] for new, old in renamed.items() if new in model_state}
    # Only groups the checkpoint holds a key of can fill the others.
    groups = [members for members in ([k for k in group if k in model_state] for group in tied)
              if any(k in out for k in members)]
    tied_keys = {k for members in groups for k in members}
    match = Match(
        tensors=out,
        prefix=prefix,
        missing=sorted(k for k in model_state if k not in renamed and k not in tied_keys),
        unexpected=sorted(renamed[k] for k in renamed if k not in model_state),
        ignored=ignored,
        wrappers=list(dict.fromkeys(p for k in tensors for p in k.split(".")[:-1]
                                    if p in WRAPPER_PARTS and p not in own_parts)),
    )
    _check_fit(match, model_state, source)
    for members in groups:
        _tie(match, members, strict, source)
    if strict and match.missing:
        raise CheckpointError(f"{source}: keys the model needs are missing from the checkpoint: "
                              f"{_listed(match.missing)}{_hint(prefix)}")
    if strict and match.unexpected:
        raise CheckpointError(f"{source}: keys in the checkpoint that the model does not have: "
                              f"{_listed(match.unexpected)} (set checkpoint.strict: false to "
                              "ignore them)")
    return match


def _tie(match: Match, members: list[str], strict: bool, source: str) -> None:
    """Give every key of one tied group the tensor of its first key the checkpoint holds.

    Other held keys must hold the same values (NaNs alike): one tensor cannot take two;
    ``strict`` refuses the checkpoint, otherwise the first key wins."""
    first, *others = (k for k in members if k in match.tensors)
    value = match.tensors[first]
    for key in others:
        other = match.tensors[key]
        # Checked after _check_fit: same shape and kind, so only values can differ.
        if not torch.allclose(value, other.to(value.dtype), rtol=0, atol=0, equal_nan=True):
            if strict:
                raise CheckpointError(f"{source}: '{first}' and '{key}' are one tied tensor in the "
                                      "model but hold different values in the checkpoint (set "
                                      f"checkpoint.strict: false to take '{first}')")
            match.tensors[key] = value
            match.tied.append((key, first))
    for key in members:
        if key not in match.tensors:
            match.tensors[key] = value
            match.tied.append((key, first))


def _kind(tensor: torch.Tensor) -> str:
    """What sort of number a tensor holds."""
    if tensor.is_quantized:
        return "quantized"
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "floating" if tensor.is_floating_point() else "integer"


def _unfit(value: torch.Tensor, want: torch.Tensor) -> str | None:
    """Why a checkpoint tensor of the right shape cannot take the place of the model's
    ``want``, or None. It must hold data (a meta tensor has none), be dense (a sparse tensor
    is no weight a module holds) and be of the model's kind: a floating slot takes any floating
    dtype, an integer slot (BatchNorm's ``num_batches_tracked``) any integer dtype, converted
    on loading; integers, booleans or complex numbers in a floating slot are not weights."""
    if value.is_meta:
        return (f"checkpoint has a meta tensor (no data) of {value.dtype}, the model expects "
                f"{want.dtype}")
    if value.layout != torch.strided:
        return (f"checkpoint has a {value.layout} tensor of {value.dtype}, the model expects a "
                f"dense {want.dtype}")
    if _kind(value) != _kind(want):
        return f"checkpoint has {value.dtype}, the model expects {want.dtype}"
    return None


def _check_fit(match: Match, model_state: Mapping[str, torch.Tensor], source: str) -> None:
    """Every matched tensor must fit its place in the model: the same shape (all mismatches
    are counted), then ``_unfit``. Dtype conversions within a kind are recorded."""
    match.mismatched = [(name, tuple(value.shape), tuple(model_state[name].shape))
                        for name, value in match.tensors.items()
                        if value.shape != model_state[name].shape]
    if match.mismatched:
        name, got, want = match.mismatched[0]
        more = f" (and {len(match.mismatched) - 1} more)" if len(match.mismatched) > 1 else ""
        raise CheckpointError(f"{source}: shape mismatch for '{name}': {list(got)} in the "
                              f"checkpoint, {list(want)} in the model{more}")
    for name, value in match.tensors.items():
        want = model_state[name]
        why = _unfit(value, want)
        if why is not None:
            raise CheckpointError(f"{source}: '{name}': {why}")
        if value.dtype != want.dtype:
            match.converted.append((name, value.dtype, want.dtype))


def _hint(prefix: str) -> str:
    return f" (after stripping prefix '{prefix}')" if prefix else ""


def common_prefix(keys: Collection[str], attribute: bool = False) -> str:
    """The wrapper prefix shared by every key, followed by one attribute name if
    ``attribute`` (a Lightning module's); for ``inspect``, where there is no model."""
    parts = [k.split(".") for k in keys]
    if not parts or min(len(p) for p in parts) < 2:
        return ""
    shared = []
    for level in zip(*[p[:-1] for p in parts]):
        if len(set(level)) != 1:
            break
        shared.append(level[0])
    out = []
    for part in shared:
        if part not in WRAPPER_PARTS:
            if attribute:
                out.append(part)
            break
        out.append(part)
    return ".".join(out) + "." if out else ""
