"""Reading checkpoints safely (DESIGN §3).

Pickles are always loaded with ``torch.load(weights_only=True)``; a file that needs other
globals is refused, naming them (found without executing anything), unless the user
allows those globals by name or passes ``--trust-checkpoint``. Safetensors files and
Hugging Face style folders (single file, sharded index, ``pytorch_model.bin``) are read too.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import pickletools
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from landscape_cli.errors import CheckpointError

#: Wrapper keys searched, in order, by ``checkpoint.key: auto``.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema", "model_ema",
                "ema_state_dict", "net", "network")
#: Top-level integers reported as metadata (Lightning's epoch/global_step among them).
METADATA_KEYS = ("epoch", "global_step", "step", "iteration", "pytorch-lightning_version")

HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


@dataclass
class Checkpoint:
    """Tensors read from a checkpoint, before they are matched to a model."""

    path: Path
    format: str
    tensors: dict[str, torch.Tensor]
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t.is_floating_point())

    def sha256(self) -> str:
        """Digest of the file, or of every file a folder checkpoint was read from."""
        digest = hashlib.sha256()
        for file in self.files:
            if len(self.files) > 1:
                digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


# ----------------------------------------------------------------------------- unsafe globals


def _allowed_global_names() -> set[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    names = set(_get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        names.add(f"{obj.__module__}.{obj.__qualname__}")
    return names


_MEMO_PUT = ("PUT", "BINPUT", "LONG_BINPUT")
_MEMO_GET = ("GET", "BINGET", "LONG_BINGET")


def _pickle_globals(path: Path) -> list[str]:
    """Globals named by a legacy (non-zip) pickle, read opcode by opcode, never executed.

    ``STACK_GLOBAL`` takes its module and name from the stack, and protocol 4 pickles push a
    repeated module name from the memo (``BINGET``): the memo is followed to name it right."""
    found: list[str] = []
    with open(path, "rb") as handle:
        while True:
            pushed: list[Any] = []  # what each opcode left on the stack, strings kept
            memo: dict[int, Any] = {}
            try:
                for op, arg, _ in pickletools.genops(handle):
                    if op.name in ("PROTO", "FRAME", "STOP"):
                        continue
                    last = pushed[-1] if pushed else None
                    if op.name == "MEMOIZE":
                        memo[len(memo)] = last
                    elif op.name in _MEMO_PUT:
                        memo[int(arg)] = last
                    elif op.name in _MEMO_GET:
                        pushed.append(memo.get(int(arg)))
                    elif op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                        pushed.append(None)
                    elif op.name == "STACK_GLOBAL":
                        module, name = (pushed[-2:] if len(pushed) >= 2 else (None, None))
                        if isinstance(module, str) and isinstance(name, str):
                            found.append(f"{module}.{name}")
                        else:
                            found.append("<unnamed STACK_GLOBAL>")
                        pushed.append(None)
                    else:
                        pushed.append(arg if isinstance(arg, str) else None)
            except Exception:
                break
            if not pushed:
                break
    return found


def unsafe_globals(path: Path) -> list[str]:
    """The globals in a pickle checkpoint that ``weights_only=True`` refuses, sorted."""
    if zipfile.is_zipfile(path):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:
            return []
    allowed = _allowed_global_names()
    return sorted({name for name in _pickle_globals(path) if name not in allowed})


def _import_global(name: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except Exception:
        raise CheckpointError(f"--allow-global {name}: cannot import it") from None


# ----------------------------------------------------------------------------- raw readers


def _torch_load(path: Path, allow_globals: Iterable[str], trust: bool) -> Any:
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from None
    extra = [_import_global(name) for name in allow_globals]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = unsafe_globals(path)
        if names or "Weights only load failed" in str(exc):
            listed = ", ".join(names) if names else "objects other than tensors"
            raise CheckpointError(
                f"{path}: refused to unpickle {listed} (weights_only=True). Allow them by name "
                "with --allow-global NAME, or pass --trust-checkpoint if you trust this file "
                "(it can run arbitrary code)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({exc})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        detail = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be read; the file is truncated, corrupt or not a PyTorch "
            f"checkpoint ({detail})"
        ) from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            return {name: handle.get_tensor(name) for name in handle.keys()}, meta  # noqa: SIM118
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    return None


def _select(obj: Any, key: str, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the state dict inside a loaded object: ``key`` is ``auto`` or a dotted path."""
    direct = _as_state_dict(obj)
    if key == "auto":
        if direct is not None:
            return direct, None
        if isinstance(obj, Mapping):
            for name in WRAPPER_KEYS:
                if name in obj:
                    found = _as_state_dict(obj[name])
                    if found is not None:
                        return found, name
                    if isinstance(obj[name], Mapping):  # e.g. {"ema": {"module": {...}}}
                        for inner in WRAPPER_KEYS:
                            found = _as_state_dict(obj[name].get(inner))
                            if found is not None:
                                return found, f"{name}.{inner}"
            top = ", ".join(map(str, list(obj)[:12]))
            raise CheckpointError(
                f"{path}: no state dict found under any of {', '.join(WRAPPER_KEYS)} "
                f"(top-level keys: {top}); set checkpoint.key"
            )
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    node = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            keys = ", ".join(map(str, list(node)[:12])) if isinstance(node, Mapping) else "none"
            raise CheckpointError(f"{path}: checkpoint.key '{key}' not found (keys there: {keys})")
        node = node[part]
    found = _as_state_dict(node)
    if found is None:
        raise CheckpointError(f"{path}: checkpoint.key '{key}' does not hold a state dict")
    return found, key


def _metadata(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        return {}
    return {k: obj[k] for k in METADATA_KEYS if isinstance(obj.get(k), (int, float, str))}


def _format_of(obj: Any, key: str | None) -> str:
    if isinstance(obj, Mapping) and ("pytorch-lightning_version" in obj
                                     or {"global_step", "epoch", "state_dict"} <= set(obj)):
        return "lightning"
    if isinstance(obj, torch.nn.Module):
        return "pickled_module"
    return "state_dict" if key is None else f"wrapped:{key}"


def _read_sharded_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc})") from None
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [str(s.name) for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
    return shards


def _read_folder(path: Path, key: str, allow_globals: Iterable[str], trust: bool) -> Checkpoint:
    present = [name for name in HF_FILES if (path / name).is_file()]
    if not present:
        raise CheckpointError(f"{path}: a folder checkpoint needs one of {', '.join(HF_FILES)}")
    name = present[0]
    files = _read_sharded_index(path / name) if name.endswith(".index.json") else [path / name]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            part, _ = _safetensors_load(file)
        else:
            part, _ = _select(_torch_load(file, allow_globals, trust), key, file)
        tensors.update(part)
    fmt = "hf_safetensors" if files[0].suffix == ".safetensors" else "hf_bin"
    if len(files) > 1:
        fmt += "_sharded"
    return Checkpoint(path=path, format=fmt, tensors=tensors, files=files)


def read_checkpoint(path: str | Path, key: str = "auto", allow_globals: Iterable[str] = (),
                    trust: bool = False) -> Checkpoint:
    """Read the tensors of a checkpoint file or folder; never runs code it carries."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        return _read_folder(path, key, allow_globals, trust)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        tensors, meta = _safetensors_load(path)
        return Checkpoint(path=path, format="safetensors", tensors=tensors,
                          metadata=dict(meta), files=[path])
    obj = _torch_load(path, allow_globals, trust)
    tensors, used = _select(obj, key, path)
    return Checkpoint(path=path, format=_format_of(obj, used), tensors=tensors, key=used,
                      metadata=_metadata(obj), files=[path])
