"""``inspect``: what a checkpoint holds, read without running any model code."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape_cli.errors import CheckpointError
from landscape_cli.loading.checkpoint import read_checkpoint, unsafe_globals
from landscape_cli.loading.matching import common_prefix


@dataclass
class InspectResult:
    """Format, tensors and safety of one checkpoint."""

    format: str
    key: str | None
    tensors: list[dict[str, Any]]
    n_params: int
    n_tensors: int
    detected_prefix: str | None
    unsafe_globals: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def results(self) -> dict[str, Any]:
        return {"format": self.format, "key": self.key, "n_tensors": self.n_tensors,
                "n_params": self.n_params, "detected_prefix": self.detected_prefix,
                "unsafe_globals": self.unsafe_globals, "loadable": not self.unsafe_globals,
                "metadata": self.metadata, "tensors": self.tensors}

    def scalars(self) -> dict[str, float]:
        return {"n_params": self.n_params, "n_tensors": self.n_tensors}

    def warnings(self) -> list[str]:
        if not self.unsafe_globals:
            return []
        return [f"weights_only loading refuses {', '.join(self.unsafe_globals)}; analyses need "
                "--allow-global NAME for each, or --trust-checkpoint"]


def _is_pickle(path: Path) -> bool:
    return path.is_file() and path.suffix != ".safetensors"


def inspect_checkpoint(path: str | Path, key: str = "auto") -> InspectResult:
    """Describe a checkpoint; an unsafe pickle is described by its globals, not loaded."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    refused = unsafe_globals(path) if _is_pickle(path) and path.stat().st_size else []
    if refused:
        fmt = "pickle" if not zipfile.is_zipfile(path) else "torch_zip"
        return InspectResult(format=fmt, key=None, tensors=[], n_params=0, n_tensors=0,
                             detected_prefix=None, unsafe_globals=refused)
    ckpt = read_checkpoint(path, key)
    tensors = [{"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                "numel": t.numel()} for name, t in ckpt.tensors.items()]
    prefix = common_prefix(list(ckpt.tensors), attribute=ckpt.format == "lightning")
    return InspectResult(format=ckpt.format, key=ckpt.key, tensors=tensors, n_params=ckpt.n_params,
                         n_tensors=len(tensors), detected_prefix=prefix or None,
                         unsafe_globals=[], metadata=dict(ckpt.metadata))
