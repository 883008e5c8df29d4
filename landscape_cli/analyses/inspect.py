"""``inspect``: what a checkpoint holds, read without running any model code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape_cli.loading.checkpoint import UnsafeCheckpoint, read_checkpoint
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


def inspect_checkpoint(path: str | Path, key: str = "auto") -> InspectResult:
    """Describe a checkpoint. It is read as the analyses read it (``weights_only=True``, which
    runs nothing); one that this refuses, a file or a folder's shard, is described by the
    globals it names instead of failing."""
    try:
        ckpt = read_checkpoint(path, key)
    except UnsafeCheckpoint as refused:
        return InspectResult(format=refused.format, key=None, tensors=[], n_params=0,
                             n_tensors=0, detected_prefix=None, unsafe_globals=refused.names)
    tensors = [{"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                "numel": t.numel()} for name, t in ckpt.tensors.items()]
    prefix = common_prefix(list(ckpt.tensors), attribute=ckpt.format == "lightning")
    return InspectResult(format=ckpt.format, key=ckpt.key, tensors=tensors, n_params=ckpt.n_params,
                         n_tensors=len(tensors), detected_prefix=prefix or None,
                         unsafe_globals=[], metadata=dict(ckpt.metadata))
