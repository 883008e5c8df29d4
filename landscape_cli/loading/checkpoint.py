"""Reading checkpoints safely (DESIGN §3).

Pickles are always loaded with ``torch.load(weights_only=True)``; a file that needs other
globals is refused, naming them (found without executing anything), unless the user
allows those globals by name or passes ``--trust-checkpoint``. Safetensors files and
Hugging Face style folders (single file, sharded index, ``pytorch_model.bin``) are read too.

A checkpoint is untrusted data: whatever its bytes, reading it either succeeds or raises a
``CheckpointError`` whose message is one line starting with the file's path.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import hashlib
import importlib
import io
import json
import math
import pickletools
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
    #: other keys of the file that hold a state dict too (``checkpoint.key: auto`` chose ``key``)
    other_keys: list[str] = field(default_factory=list)
    #: for a checkpoint held in memory, what reads its optimizer state when a measure needs it
    #: (a live optimizer's: ``optimizer_state.live_optimizer_state``); a file's is read from it
    optimizer: Callable[[], Any] | None = None

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t.is_floating_point())

    def sha256(self) -> str | None:
        """Digest of the file, or of every file a folder checkpoint was read from (None for one
        held in memory)."""
        if not self.files:
            return None
        digest = hashlib.sha256()
        for file in self.files:
            if len(self.files) > 1:
                digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


# ----------------------------------------------------------------------------- errors


class UnsafeCheckpoint(CheckpointError):
    """``weights_only=True`` refused a pickle that names globals outside its allowlist."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names = path, names
        self.format = "torch_zip" if zipfile.is_zipfile(path) else "pickle"
        super().__init__(
            f"{path}: refused to unpickle {', '.join(names)} (weights_only=True). Allow them by "
            "name with --allow-global NAME, or pass --trust-checkpoint if you trust this file "
            "(it can run arbitrary code)")


#: Lines torch wraps around a weights_only failure: advice, not the cause.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(exc: BaseException) -> str:
    """The cause of a reader's exception in a few words: the first sentence of the first line
    of its message that is not torch's boilerplate advice, cut short."""
    lines = (line.strip() for line in str(exc).splitlines())
    cause = next((line for line in lines if line and not line.startswith(_TORCH_ADVICE)), "")
    cause = cause.split(". ")[0][:200]
    return f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__


# ----------------------------------------------------------------------------- unsafe globals


_MARK = object()  # a MARK on the symbolic stack
_STRING_RESULTS = ([pickletools.pyunicode], [pickletools.pybytes_or_str])
#: A legacy (non-zip) torch file is five pickles (magic number, protocol, system info, the
#: object, storage keys) followed by raw storage bytes, which are not to be parsed.
_LEGACY_PICKLES = 5


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as unpickling imports it: Python 2 names (``__builtin__.set``, which
    ``torch.save``'s protocol 2 writes) are mapped to their Python 3 homes, as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _named_global(op: pickletools.OpcodeInfo, arg: Any, stack: list[Any]) -> str | None:
    """The global an opcode loads, if it loads one: GLOBAL and INST carry ``module name``,
    STACK_GLOBAL takes both from the stack, EXT1/2/4 look a code up in copyreg's registry.
    (OBJ, NEWOBJ, REDUCE and BUILD only call what one of these pushed.)"""
    if op.name in ("GLOBAL", "INST"):
        return _python3_name(*str(arg).split(" ", 1))
    if op.name == "STACK_GLOBAL":
        module, name = stack[-2:] if len(stack) >= 2 else (None, None)
        both = isinstance(module, str) and isinstance(name, str)
        return _python3_name(module, name) if both else "<unnamed STACK_GLOBAL>"
    if op.name in ("EXT1", "EXT2", "EXT4"):
        module_name = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
        return _python3_name(*module_name) if module_name else f"<extension code {arg}>"
    return None


def _pop(op: pickletools.OpcodeInfo, stack: list[Any]) -> None:
    """Remove what ``op`` consumes: down to the last MARK if it takes a mark, and then (or
    otherwise) one entry per object it takes. A stack that runs short is a malformed pickle."""
    count = len(op.stack_before)
    if pickletools.markobject in op.stack_before:
        count = op.stack_before.index(pickletools.markobject)
        marks = [i for i, item in enumerate(stack) if item is _MARK]
        del stack[marks[-1]:]  # IndexError without a MARK
    if count > len(stack):
        raise IndexError(f"{op.name} on a stack of {len(stack)}")
    del stack[len(stack) - count:]


def _step(op: pickletools.OpcodeInfo, arg: Any, stack: list[Any], memo: dict[Any, Any]) -> None:
    """Apply one opcode's effect to a stack that keeps strings (what STACK_GLOBAL can name) and
    stands ``None`` for every other object; the memo keeps what was put there."""
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo.get(arg))
    elif op.name == "DUP":
        stack.append(stack[-1])
    else:
        _pop(op, stack)
        value = arg if op.stack_after in _STRING_RESULTS and isinstance(arg, str) else None
        stack.extend(_MARK if item is pickletools.markobject else value for item in op.stack_after)


def _pickle_globals(stream: IO[bytes], count: int) -> list[str]:
    """Globals named by up to ``count`` consecutive pickles, read opcode by opcode on a
    symbolic stack, never executed. The end of the stream or a malformed pickle ends the scan,
    keeping what came before."""
    found: list[str] = []
    for _ in range(count):
        stack: list[Any] = []
        memo: dict[Any, Any] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                name = _named_global(op, arg, stack)
                if name is not None:
                    found.append(name)
                _step(op, arg, stack, memo)
        except Exception:  # the end of the file, or bytes that are no (further) pickle
            break
    return found


def _zip_pickles(path: Path) -> Iterator[IO[bytes]]:
    """The ``data.pkl`` members of a torch zip (the pickle ``torch.load`` runs); none if
    the zip cannot be read, or is a TorchScript archive (``constants.pkl``), whose pickles
    ``weights_only=True`` refuses to run at all."""
    try:
        with zipfile.ZipFile(path) as archive:
            by_name = [(n.rpartition("/")[2], n) for n in archive.namelist()]
            torchscript = any(base == "constants.pkl" for base, _ in by_name)
            members = [] if torchscript else [archive.read(n) for base, n in by_name
                                              if base == "data.pkl"]
    except Exception:  # a zip this module cannot read: nothing to list
        return
    yield from map(io.BytesIO, members)


def _allowed_global_names() -> set[str]:
    """What the weights_only unpickler accepts right now: its defaults and the user's."""
    from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

    return set(_get_allowed_globals()) | set(_get_user_allowed_globals())


def unsafe_globals(path: Path) -> list[str]:
    """The globals in a pickle checkpoint that ``weights_only=True`` refuses, sorted."""
    if zipfile.is_zipfile(path):
        found = [name for stream in _zip_pickles(path) for name in _pickle_globals(stream, 1)]
    else:
        with open(path, "rb") as handle:
            found = _pickle_globals(handle, _LEGACY_PICKLES)
    allowed = _allowed_global_names()
    return sorted({name for name in found if name not in allowed})


def _import_global(name: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except Exception:
        raise CheckpointError(f"--allow-global {name}: cannot import it") from None


# ----------------------------------------------------------------------------- raw readers


def torch_load(path: Path, allow_globals: Iterable[str] = (), trust: bool = False,
               mmap: bool = False) -> Any:
    """``torch.load`` of an untrusted file: a failure is the file's fault, whatever torch
    raises (an empty pickle stack, a short read, a bad zip member, an allowed global called
    with garbage). It is a refusal naming the globals the pickle needs, when it names any
    that are not allowed, else a corrupt file. ``mmap``: a zip file's tensors are mapped, not
    read, until used (a legacy file is read whole)."""
    extra = [] if trust else [_import_global(name) for name in allow_globals]
    with torch.serialization.safe_globals(extra):
        try:
            with warnings.catch_warnings():
                # torch warns about pickle protocols and formats on stderr: the outcome
                # (loaded or refused) says all, and stderr keeps to one line.
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=not trust,
                                  mmap=mmap and zipfile.is_zipfile(path))
        except Exception as exc:
            names = [] if trust else unsafe_globals(path)
            if names:
                raise UnsafeCheckpoint(path, names) from None
            how = "torch.load" if trust else "torch.load with weights_only=True"
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint, or a format {how} cannot "
                                  f"read ({_reason(exc)})") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            return {name: handle.get_tensor(name) for name in handle.keys()}, meta  # noqa: SIM118
    except Exception as exc:  # the library's own errors, for any header or data it rejects
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint; cannot be read as safetensors "
                              f"({_reason(exc)})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    return None


def _wrapped(obj: Mapping) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Every state dict under a wrapper key (``WRAPPER_KEYS`` order), one level deeper too
    (e.g. ``{"ema": {"module": {...}}}``), with its dotted key."""
    found = []
    for name in WRAPPER_KEYS:
        inside = obj.get(name)
        direct = _as_state_dict(inside)
        if direct is not None:
            found.append((name, direct))
        elif isinstance(inside, Mapping):
            found += [(f"{name}.{inner}", sd) for inner in WRAPPER_KEYS
                      if (sd := _as_state_dict(inside.get(inner))) is not None][:1]
    return found


def _select(obj: Any, key: str, path: Path
            ) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """Find the state dict inside a loaded object: ``key`` is ``auto`` or a dotted path.
    Returns it, the key it was under, and (for ``auto``) the other keys that hold one."""
    direct = _as_state_dict(obj)
    if key == "auto":
        if direct is not None:
            return direct, None, []
        if isinstance(obj, Mapping):
            found = _wrapped(obj)
            if found:
                return found[0][1], found[0][0], [name for name, _ in found[1:]]
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
    return found, key, []


def _metadata(obj: Any) -> dict[str, Any]:
    """The known metadata keys (``METADATA_KEYS``) that hold a string or a finite number:
    nothing else a file carries may reach the report."""
    if not isinstance(obj, Mapping):
        return {}
    return {k: obj[k] for k in METADATA_KEYS
            if isinstance(obj.get(k), (int, str)) or (isinstance(obj.get(k), float)
                                                       and math.isfinite(obj[k]))}


def _format_of(obj: Any, key: str | None) -> str:
    if isinstance(obj, Mapping) and ("pytorch-lightning_version" in obj
                                     or {"global_step", "epoch", "state_dict"} <= set(obj)):
        return "lightning"
    if isinstance(obj, torch.nn.Module):
        return "pickled_module"
    return "state_dict" if key is None else f"wrapped:{key}"


# ----------------------------------------------------------------------------- folders


def _containment_root(folder: Path) -> Path:
    """The folder a folder checkpoint's files must resolve into: the folder itself, or for a
    Hugging Face cache snapshot (``<repo>/snapshots/<revision>``, whose files are symlinks
    into ``<repo>/blobs``) the cached repository."""
    real = folder.resolve()
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        return real.parent.parent
    return real


def _folder_file(folder: Path, name: str, source: Path) -> Path:
    """``folder / name``, refused unless it resolves (symlinks followed) inside the folder:
    an index entry such as ``../x`` or ``/abs/x``, or a symlink planted in the folder, must
    not make the tool read files elsewhere. ``source`` is the file that named it."""
    file = folder / name
    try:
        inside = file.resolve().is_relative_to(_containment_root(folder))
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise CheckpointError(f"{source}: entry '{name}' cannot be resolved ({_reason(exc)})") from None
    if not inside:
        raise CheckpointError(f"{source}: entry '{name}' lies outside the checkpoint folder {folder}; "
                              "refused")
    return file


def _shard_names(index: Path) -> list[str]:
    """The shard files a ``*.index.json`` names. Its ``weight_map`` must be a non-empty
    object mapping tensor names to file names; anything else is a malformed index."""
    try:
        doc = json.loads(index.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({_reason(exc)})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: not a valid shard index: 'weight_map' must be a non-empty "
                              "object mapping tensor names to shard files")
    bad = next((k for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
    if bad is not None:
        raise CheckpointError(f"{index}: weight_map entry '{bad}' is not a file name: "
                              f"{json.dumps(weight_map[bad])[:80]}")
    return sorted(set(weight_map.values()))


def _shard_files(index: Path) -> list[Path]:
    names = _shard_names(index)
    files = [_folder_file(index.parent, name, index) for name in names]
    missing = [name for name, file in zip(names, files) if not file.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
    return files


def _merge(parts: list[tuple[Path, dict[str, torch.Tensor]]], folder: Path) -> dict[str, torch.Tensor]:
    """One state dict from a folder's files; a tensor in two files is ambiguous."""
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for file, part in parts:
        for name, tensor in part.items():
            if name in tensors:
                raise CheckpointError(f"{folder}: tensor '{name}' is in both {origin[name].name} and "
                                      f"{file.name}")
            tensors[name], origin[name] = tensor, file
    return tensors


def _read_folder(path: Path, key: str, allow_globals: Iterable[str], trust: bool) -> Checkpoint:
    present = [name for name in HF_FILES if (path / name).is_file()]
    if not present:
        raise CheckpointError(f"{path}: a folder checkpoint needs one of {', '.join(HF_FILES)}")
    entry = _folder_file(path, present[0], path)
    files = _shard_files(entry) if entry.name.endswith(".index.json") else [entry]
    parts = []
    for file in files:
        if file.suffix == ".safetensors":
            part, _ = _safetensors_load(file)
        else:
            part, _, _ = _select(torch_load(file, allow_globals, trust), key, file)
        parts.append((file, part))
    fmt = "hf_safetensors" if files[0].suffix == ".safetensors" else "hf_bin"
    if len(files) > 1:
        fmt += "_sharded"
    return Checkpoint(path=path, format=fmt, tensors=_merge(parts, path), files=files)


# ----------------------------------------------------------------------------- entry point


def _read(path: Path, key: str, allow_globals: Iterable[str], trust: bool) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        return _read_folder(path, key, allow_globals, trust)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        tensors, meta = _safetensors_load(path)
        return Checkpoint(path=path, format="safetensors", tensors=tensors,
                          metadata=_metadata(meta), files=[path])
    obj = torch_load(path, allow_globals, trust)
    tensors, used, others = _select(obj, key, path)
    return Checkpoint(path=path, format=_format_of(obj, used), tensors=tensors, key=used,
                      metadata=_metadata(obj), files=[path], other_keys=others)


def read_checkpoint(path: str | Path, key: str = "auto", allow_globals: Iterable[str] = (),
                    trust: bool = False) -> Checkpoint:
    """Read the tensors of a checkpoint file or folder; never runs code it carries."""
    path = Path(path)
    try:
        return _read(path, key, allow_globals, trust)
    except OSError as exc:  # unreadable (permissions, a vanished file): still the input's fault
        raise CheckpointError(f"{path}: cannot be read ({_reason(exc)})") from None
