"""The YAML config (DESIGN §2): schema, discovery, ``extends``, ``--set`` overrides.

A config names the Python to run (model, data, loss factories), so it is trusted code;
it is read with ``yaml.safe_load`` all the same. Relative paths in a file (``python_path``,
``data.path`` and ``path/file.py:attr`` factories) are resolved against that file's folder,
so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, SequenceNode

from landscape_cli.errors import CheckpointError, ConfigError
from landscape_cli.names import AUTO, NO_SHARD, PRECISIONS, Precision, Shard, Strategy

CONFIG_FILENAME = "landscape.yaml"
CONFIG_ENV = "LANDSCAPE_CONFIG"
DEFAULT_CRITERION = "torch.nn:CrossEntropyLoss"
#: A config is a short hand-written file; anything larger is a wrong file or an attack.
MAX_CONFIG_BYTES = 1 << 20
#: The values a document may hold once its aliases are expanded: as many as an alias-free
#: file of MAX_CONFIG_BYTES can spell out (each value takes at least two bytes, "0,").
MAX_VALUES = MAX_CONFIG_BYTES // 2
#: How deeply a document may nest, aliases expanded (the composer, deepcopy and the JSON of
#: the digest all recurse once per level).
MAX_DEPTH = 64
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here (auto, cpu, cuda or cuda:N; ``auto``: the first CUDA
    device when there is one, else the CPU), or ValueError where it is not a device or this
    machine lacks it. The one device check: the config runs it as it is read."""
    if not DEVICE.fullmatch(name):
        raise ValueError(f"'{name}' is not a device; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count()  # 0 where CUDA is not available
    if name == "auto":
        return torch.device("cuda" if count else "cpu")
    if name.startswith("cuda") and int(name[5:] or 0) >= count:
        have = f"only {count} CUDA device(s)" if count else "no CUDA device"
        raise ValueError(f"'{name}' asked for, but this machine has {have}")
    return torch.device(name)


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``, with two changes:

    - ``1e-3`` is a float (as in YAML 1.2 and JSON), not the string PyYAML's YAML 1.1 rules
      make of an exponent without a dot;
    - a document holds at most MAX_VALUES values, nested at most MAX_DEPTH deep, counted as
      if every alias (``*a``, ``<<: *a``) were a copy of what it names. Loading shares one
      object per anchor, so a "billion laughs" document loads at once; whatever walks it
      afterwards (the digest's JSON, pydantic) expands it and never ends.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open = 0  # collections being composed around the current node
        self._extent: dict[int, tuple[int, int]] = {}  # id(node): (values, depth), expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._extent:  # its anchor's collection is still open
                raise ComposerError(None, None, f"alias *{event.anchor} refers to a collection "
                                    "that contains it", event.start_mark)
            return node
        if self._open == MAX_DEPTH:  # before composing on: the composer recurses per level
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                event.start_mark)
        self._open += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        self._extent[id(node)] = self._measure(node)
        return node

    def _measure(self, node: Node) -> tuple[int, int]:
        """(values, depth) of a composed node, from its children's, which are all known."""
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        extents = [self._extent[id(child)] for child in children]
        values = 1 + sum(n for n, _ in extents)
        depth = 1 + max((d for _, d in extents), default=0)
        if values > MAX_VALUES:
            raise ComposerError(None, None, f"aliases expand this to more than {MAX_VALUES} "
                                "values", node.start_mark)
        if depth > MAX_DEPTH:
            raise ComposerError(None, None, f"aliases nest this more than {MAX_DEPTH} levels "
                                "deep", node.start_mark)
        return values, depth


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML text (see ``_SafeLoader``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_SafeLoader)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error. PyYAML's own text spans lines: the problem, then a
    snippet of the source with a caret under the place."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = ", ".join(p for p in parts if p) or str(exc).splitlines()[0]
    return f"invalid YAML{where}: {problem}"


class _Section(BaseModel):
    # inf and nan are never a meaningful setting (YAML spells them .inf, .nan, 1e999)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _FactorySection(_Section):
    @model_validator(mode="before")
    @classmethod
    def _target_alias(cls, data: Any) -> Any:
        """Accept Hydra's ``_target_`` as an alias of ``factory``."""
        if isinstance(data, dict) and "_target_" in data:
            if "factory" in data:
                raise ValueError("give either 'factory' or '_target_', not both")
            data = {("factory" if k == "_target_" else k): v for k, v in data.items()}
        return data


class ModelSection(_FactorySection):
    factory: str = Field(min_length=1, description="'module:attr' or 'path/file.py:attr'")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class CheckpointSection(_Section):
    key: str = "auto"
    strip_prefix: str = "auto"
    strict: bool = True


class DataSection(_FactorySection):
    path: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=256, gt=0)
    max_samples: int | None = Field(default=None, gt=0)
    #: read the batches again on every pass instead of holding them; unset: only when holding
    #: them would pass the host memory budget
    stream: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.path is None) == (self.factory is None):
            raise ValueError("give exactly one of 'path' (a .npz/.pt file) or 'factory'")
        return self


class LossSection(_FactorySection):
    factory: str | None = None
    fn: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_criterion(cls, data: Any) -> Any:
        if isinstance(data, dict) and not {"factory", "_target_", "fn"} & data.keys():
            data = {**data, "factory": DEFAULT_CRITERION}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> LossSection:
        if self.factory is not None and self.fn is not None:
            raise ValueError("give either 'factory' (a criterion) or 'fn' (fn(model, batch)), not both")
        return self


class EngineSection(_Section):
    """How H·v is computed; never what (``engine/hvp.py``). Left out of the config digest."""

    strategy: Strategy = AUTO
    memory_budget: ByteSize | None = Field(
        default=None, description="bytes ('8GB', '512MiB') the cached graph, then the SLQ bases, "
        "may hold; default: half the GPU's memory or 40% of the RAM (what the machine has)")
    compile: bool = False
    #: ``fsdp``: shard the model over the ranks of a torchrun launch (``--shard-model``)
    shard: Shard = NO_SHARD
    #: the module classes sharded one by one (then the root); default: the classes that repeat
    shard_modules: list[str] = Field(default_factory=list)


class OptimizerSection(_Section):
    """The checkpoint's optimizer state (the stability measures): where it is in the file, which
    optimizer it is where its keys cannot say, and the order of its parameters where it keeps
    no names (``loading/optimizer_params.py``)."""

    key: str = "auto"
    type: Literal["auto", "sgd", "adam", "adamw"] = "auto"
    param_order: Literal["auto", "names", "parameters", "trainer"] | list[str] = "auto"


class Config(_Section):
    model: ModelSection
    checkpoint: CheckpointSection = CheckpointSection()
    data: DataSection
    #: data the model was not trained on (same schema): ``interpolate`` reports its curves too
    eval_data: DataSection | None = None
    loss: LossSection = Field(default_factory=lambda: LossSection(factory=DEFAULT_CRITERION))
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    #: how the passes run (Lightning's names); the dtype follows it where the config leaves
    #: dtype out, and contradicting it is an error (``_precision_and_dtype``)
    precision: Precision = "32"
    seed: int = Field(default=0, ge=0, lt=2**64, description="0 to 2**64-1, as torch.manual_seed")
    bn: Literal["eval", "train-stats"] = "eval"
    engine: EngineSection = EngineSection()
    optimizer: OptimizerSection = OptimizerSection()
    python_path: list[str] = Field(default_factory=list)
    source: str = Field(default="<config>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _precision_and_dtype(cls, data: Any) -> Any:
        """``precision: 32`` as YAML reads it (an integer) as Lightning's name, "32"; a dtype
        left out follows the precision (64: float64, the others float32) and a precision left
        out the dtype (float64: 64, float32: 32)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if type(data.get("precision")) is int:
            data["precision"] = str(data["precision"])
        if "dtype" not in data and data.get("precision") in PRECISIONS:
            data["dtype"] = PRECISIONS[data["precision"]]
        elif "precision" not in data and data.get("dtype") == "float64":
            data["precision"] = "64"
        return data

    @field_validator("precision")
    @classmethod
    def _precision_keeps_dtype(cls, value: str, info: ValidationInfo) -> str:
        """A precision runs on weights of one dtype: a dtype given besides must be that one."""
        implied, dtype = PRECISIONS[value], info.data.get("dtype")
        if dtype is not None and dtype != implied:
            raise ValueError(f"{value} holds the weights in {implied}, but dtype is {dtype}; "
                             f"leave dtype out or set dtype: {implied}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """A device that exists here (``resolve_device``): the model and the data would
        otherwise fail halfway through, on their way to it."""
        resolve_device(value)
        return value

    def sha256(self) -> str:
        """Digest of the resolved config, for reports and the batch cache."""
        # precision 32 and 64 say no more than the dtype: such a config keeps its digest
        plain = {"precision"} if self.precision in ("32", "64") else set()
        # nor does an optimizer section left at its defaults (configs before it keep theirs)
        plain |= {"optimizer"} if self.optimizer == OptimizerSection() else set()
        text = json.dumps(self.model_dump(mode="json", exclude={"engine", *plain}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- discovery


def find_config(explicit: str | None, checkpoint: str | None, cwd: Path | None = None) -> Path:
    """``-c FILE``, else ``$LANDSCAPE_CONFIG``, else ``landscape.yaml`` beside the checkpoint
    or in one of its parent folders, else in the working directory."""
    cwd = cwd or Path.cwd()
    if explicit:
        path = Path(explicit)
        if not path.exists():  # other troubles (a folder, no permission) show on reading it
            raise ConfigError(str(path), None, "config file not found (given with --config)")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.exists():
            raise ConfigError(str(path), None, f"config file not found (given by ${CONFIG_ENV})")
        return path
    looked: list[Path] = []
    if checkpoint:
        if not Path(checkpoint).exists():  # the search starts there: "no config" would mislead
            raise CheckpointError(f"{checkpoint}: checkpoint not found")
        start = Path(checkpoint).resolve()
        folder = start if start.is_dir() else start.parent
        for parent in (folder, *folder.parents):
            candidate = parent / CONFIG_FILENAME
            looked.append(candidate)
            if candidate.is_file():
                return candidate
    candidate = cwd / CONFIG_FILENAME
    if candidate not in looked:
        looked.append(candidate)
        if candidate.is_file():
            return candidate
    shown = ", ".join(str(p.parent) for p in looked[:4]) + (" ..." if len(looked) > 4 else "")
    raise ConfigError(
        CONFIG_FILENAME,
        None,
        f"no config found (looked in {shown}); pass --config FILE or set ${CONFIG_ENV}",
    )


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value), the value read as a YAML scalar/flow.
    Each part of the key is a non-empty name of printable characters."""
    key, sep, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(p and p.isprintable() for p in parts):
        raise ConfigError("--set", text, "expected KEY.PATH=VALUE, e.g. data.batch_size=64")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", key.strip(), _yaml_problem(exc)) from None
    return parts, value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Return a copy of ``tree`` with ``value`` set at ``path`` (intermediate maps created).

    The maps along ``path`` are copied one by one: a YAML alias (``&x`` ... ``*x``) makes one
    map appear in two places, and a deep copy keeps them one map, so setting a key in one
    place would set it in the other too."""
    out = copy.deepcopy(tree)
    node = out
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError("--set", ".".join(path[: i + 1]), "is not a mapping")
        node[part] = child = dict(child)
        node = child
    node[path[-1]] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Maps merge key by key; anything else in ``top`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- loading


def _absolute(path: str, base: Path) -> str:
    expanded = Path(os.path.expanduser(path))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _absolute_factory(spec: Any, base: Path) -> Any:
    """``path/file.py:attr`` -> absolute file path; ``module:attr`` is left alone."""
    if not isinstance(spec, str):
        return spec
    target, sep, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if target.endswith(".py") or "/" in target:
        return _absolute(target, base) + sep + attr
    return spec


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the relative paths of one file absolute against that file's folder."""
    out = copy.deepcopy(raw)
    if isinstance(out.get("python_path"), list):
        out["python_path"] = [_absolute(str(p), base) for p in out["python_path"]]
    for section, keys in (("model", ("factory", "_target_")), ("data", ("factory", "_target_")),
                          ("eval_data", ("factory", "_target_")),
                          ("loss", ("factory", "_target_", "fn"))):
        block = out.get(section)
        if isinstance(block, dict):
            for key in keys:
                if key in block:
                    block[key] = _absolute_factory(block[key], base)
            if section in ("data", "eval_data") and isinstance(block.get("path"), str):
                block["path"] = _absolute(block["path"], base)
    return out


def _read_text(path: Path) -> str:
    """A config file's text: UTF-8, at most MAX_CONFIG_BYTES."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)  # not its size: /dev/zero has none
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read config: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), None, f"larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                          "a config is a short YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start}); save it as UTF-8") from None


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one config file, following ``extends`` (paths resolved per file)."""
    path = path.resolve()
    if path in _chain:
        raise ConfigError(str(path), "extends", "circular 'extends' chain")
    try:
        raw = safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, _yaml_problem(exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), None, "the top level must be a mapping of keys")
    raw = _resolve_paths(raw, path.parent)
    if "python_path" not in raw and not _chain:
        raw["python_path"] = [str(path.parent)]
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(str(path), "extends", "must be a path to another config file")
    base_path = Path(_absolute(parent, path.parent))
    if not base_path.exists():
        raise ConfigError(str(path), "extends", f"file not found: {base_path}")
    return deep_merge(read_yaml(base_path, (*_chain, path)), raw)


def _origin(key: str | None, origins: Mapping[str, str]) -> str | None:
    """Where a key's value came from on the command line (it or a parent key), if it did."""
    parts = (key or "").split(".")
    return next((origins[k] for k in (".".join(parts[:i]) for i in range(len(parts), 0, -1))
                 if k in origins), None)


def validate(raw: dict[str, Any], source: str, origins: Mapping[str, str] = {}) -> Config:
    """Validate a merged raw config; every error names the file and the key, or the
    command-line flag that set the key (``origins``: key → flag)."""
    try:
        return Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        extra = len(errors) - 1
        more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
        flag = _origin(key, origins)
        if flag is not None:
            raise ConfigError(flag, None, f"{key}: {message}{more}") from None
        raise ConfigError(source, key, message + more) from None


def load_config(path: str | Path, overrides: Sequence[str] = (),
                flags: Mapping[str, tuple[str, Any]] = {}) -> Config:
    """Read, merge ``extends``, apply ``--set KEY=VALUE`` overrides, then the dedicated flags
    (``flags``: key → (the flag as typed, its value)), which win; validate. An invalid value
    is reported against the flag or ``--set`` that gave it, not the file."""
    raw = read_yaml(Path(path))
    origins: dict[str, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        raw = apply_override(raw, keys, value)
        origins[".".join(keys)] = f"--set {text}"
    for key, (flag, value) in flags.items():
        raw = apply_override(raw, key.split("."), value)
        origins[key] = flag
    return validate(raw, str(path), origins)
