"""``trace --diagonal``: an estimate of the measured matrix's diagonal (Hutchinson's, with each
entry's standard error), written as safetensors named like the model's parameters, for pruning,
quantisation and Fisher merging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from landscape_cli.engine.problem import Problem
from landscape_cli.linalg.diagonal import hutchinson_diagonal
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.report.output import Destination, write_file
from landscape_cli.report.tensor_file import safetensors_bytes


def write_diagonal(operator: LinearOperator, problem: Problem, files: tuple[Destination, Destination], *,
                   probes: int, seed: int, curvature: str) -> dict[str, Any]:
    """Estimate diag(A) by ``probes`` products, write the values and the standard errors (one
    tensor per analysed parameter each), and say what was written."""
    estimate = hutchinson_diagonal(operator, probes, torch.Generator().manual_seed(seed + 1))
    metadata = {"matrix": curvature, "estimator": "hutchinson", "probes": str(probes), "seed": str(seed)}
    sizes = [s.numel() for s in problem.shapes]
    for dest, values, what in ((files[0], estimate.values, "estimate"),
                               (files[1], estimate.stderr, "standard error")):
        tensors = {name: piece.reshape(shape).clone() for name, shape, piece
                   in zip(problem.names, problem.shapes, values.split(sizes))}
        data = safetensors_bytes(tensors, {**metadata, "holds": what})
        write_file(dest, lambda path, data=data: Path(path).write_bytes(data))
    relative = (estimate.stderr / estimate.values.abs().clamp(min=1e-300)).median()
    return {"file": str(files[0].path), "stderr_file": str(files[1].path), "probes": probes,
            "median_relative_stderr": float(relative), "sum": float(estimate.values.sum()),
            "metadata": json.loads(json.dumps(metadata))}
