"""Ritz vectors as a file (``spectrum --save-vectors``), for ``safetensors.torch.load_file`` and,
with two top vectors or more, for ``interpolate --plane --load-directions``.

Tensors: ``top_1/<parameter>``, ``top_2/<parameter>``, …, ``bottom_1/<parameter>``, … : each
Ritz vector cut into the analysed parameters, named and shaped like them, float64 as Lanczos
computed it (unit norm over the analysed parameters; the rank is the table's and the gates'
``top_N``). With two top vectors, the file is also a directions file (``save_plane``'s tensors
``origin`` = θ₀, ``u`` = top_1, ``v`` = top_2, flat, and its metadata, basis ``hessian``).
Metadata (strings): ``vectors``, the JSON list of the vectors' names in order, and under each
name its JSON ``{"end", "rank", "eigenvalue", "residual", "converged"}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from landscape_cli.analyses.directions import Plane
from landscape_cli.analyses.plane_file import save_plane
from landscape_cli.engine.problem import Problem
from landscape_cli.linalg.lanczos import RitzPairs
from landscape_cli.report.output import Destination, write_file
from landscape_cli.report.tensor_file import safetensors_bytes


@dataclass(frozen=True, eq=False)
class VectorsFile:
    """Where ``save_ritz_vectors`` writes (checked before any loading), the parameters the
    flat vectors stand for (their names, shapes and values θ₀, the plane's origin), and how
    many trainable parameters the model has (more than θ₀'s under ``--params``)."""

    dest: Destination
    names: Sequence[str]
    shapes: Sequence[Sequence[int]]
    theta0: torch.Tensor
    model_parameters: int

    @classmethod
    def of(cls, dest: Destination, problem: Problem) -> VectorsFile:
        """The file for ``problem``'s analysed parameters, against its model's trainable ones."""
        model = problem.objective.model
        return cls(dest, problem.names, problem.shapes, problem.theta0,
                   sum(p.numel() for p in model.parameters() if p.requires_grad))


def _vectors(end: str, pairs: RitzPairs) -> list[tuple[str, dict, torch.Tensor]]:
    return [(f"{end}_{rank}", {"end": end, "rank": rank, "eigenvalue": value,
                               "residual": residual, "converged": converged}, vector)
            for rank, (value, residual, converged, vector)
            in enumerate(zip(pairs.values, pairs.residuals, pairs.converged, pairs.vectors), 1)]


def save_ritz_vectors(top: RitzPairs, bottom: RitzPairs | None, to: VectorsFile) -> None:
    """Write the Ritz vectors of ``top`` and ``bottom`` (None: not asked for) as described
    above, atomically (``report.output.write_file``)."""
    found = _vectors("top", top) + (_vectors("bottom", bottom) if bottom is not None else [])
    sizes = [int(torch.Size(shape).numel()) for shape in to.shapes]
    tensors, metadata = {}, {"vectors": json.dumps([name for name, _, _ in found])}
    for name, about, vector in found:
        metadata[name] = json.dumps(about)
        for parameter, shape, piece in zip(to.names, to.shapes, vector.split(sizes)):
            tensors[f"{name}/{parameter}"] = piece.reshape(tuple(shape)).to(
                "cpu", torch.float64, copy=True)

    def write(path: Path) -> None:
        if len(top.values) >= 2:  # the plane's own tensors and metadata, as save_plane writes them
            plane = Plane(origin=to.theta0, u=top.vectors[0], v=top.vectors[1], basis="hessian",
                          names=tuple(to.names), shapes=tuple(map(tuple, to.shapes)))
            save_plane(plane, Destination(to.dest.option, to.dest.path, path, atomic=False))
            with safe_open(str(path), framework="pt") as plane_file:
                metadata.update(plane_file.metadata())
            tensors.update(load_file(path))
        path.write_bytes(safetensors_bytes(tensors, metadata))

    write_file(to.dest, write)
