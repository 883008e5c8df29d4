"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", algorithm 1; Entezari et al. 2022):
find permutations of B's hidden units that bring its weights closest to A's.

A *permutation spec* lists groups of hidden units. Each group permutes some axes of some tensors
of the state dict: the rows of the layer that produces the units, the columns of the layers that
consume them, the per-unit vectors of a normalisation layer between them. With every group's
permutation P_g applied to B, the objective is

    Σ_tensors ⟨W_A, π(W_B)⟩      (π: every axis permuted by its group's P)

which is maximal (‖W_A‖², by Cauchy–Schwarz) when B is A with its units permuted. Coordinate
descent: for one group at a time, in a seeded random order, with the other groups' current
permutations applied (and this group's own on a tensor's other axes, when a tensor carries the
group twice, as a residual stream's square weights do), the objective is linear in P_g:

    C[i, j] = Σ_{(W, axis) ∈ g} ⟨W_A[i along axis], W_B[j along axis]⟩

and the best P_g is a linear assignment, solved exactly by
``scipy.optimize.linear_sum_assignment(C, maximize=True)``. A sweep visits every group once; the
search stops after a sweep that changes nothing (or after ``max_iter`` sweeps). A group's
permutation only changes when the assignment gains more than a relative 1e-12, so ties cannot
make it cycle. Cost matrices are float64.

Pure tensor code: the spec is any object with ``groups`` (each with ``name``, ``size`` and
``axes``, each axis a ``key``, an ``axis`` and a ``block``). A *block* > 1 means that unit i
occupies the ``block`` consecutive entries i·block … (i+1)·block − 1 along the axis (a conv's
channel after ``flatten``: its spatial positions in the next Linear's input columns).

Convention: ``perm[i] = j`` means that unit i of the aligned B is unit j of B (the aligned
tensor is ``W_B.index_select(axis, perm)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from scipy.optimize import linear_sum_assignment

#: A gain smaller than this (relative to the group's current objective) is not a change.
GAIN_RTOL = 1e-12


class AxisLike(Protocol):
    key: str
    axis: int
    block: int


class GroupLike(Protocol):
    name: str
    size: int
    axes: Sequence[AxisLike]


class SpecLike(Protocol):
    groups: Sequence[GroupLike]


@dataclass(frozen=True)
class _Use:
    """One (group, axis) entry of a tensor."""

    group: str
    axis: int
    block: int
    size: int


class Matching(dict):  # dict[str, torch.Tensor]
    """The permutations, one LongTensor per group name, with how the search went: ``sweeps``
    (full passes over the groups, the last one included) and ``converged`` (the last sweep
    changed nothing)."""

    def __init__(self, perms: Mapping[str, torch.Tensor], *, sweeps: int, converged: bool):
        super().__init__(perms)
        self.sweeps = sweeps
        self.converged = converged


def weight_matching(spec: SpecLike, state_a: Mapping[str, torch.Tensor],
                    state_b: Mapping[str, torch.Tensor], *, max_iter: int = 100,
                    seed: int = 0) -> Matching:
    """The permutations of B's units (one per group of ``spec``) that maximise Σ ⟨W_A, π(W_B)⟩,
    by coordinate descent over the groups with an exact linear assignment for each (module
    docstring). Deterministic for a given ``seed``."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, not {max_iter}")
    groups = [g for g in spec.groups if g.size > 1]
    uses = _uses(spec)
    a = {key: state_a[key].detach().to(torch.float64) for key in uses}
    b = {key: state_b[key].detach().to(torch.float64) for key in uses}
    device = {key: t.device for key, t in b.items()}
    perms = {g.name: torch.arange(g.size) for g in spec.groups}
    generator = torch.Generator().manual_seed(seed)
    sweeps, converged = 0, False
    while sweeps < max_iter and not converged:
        sweeps += 1
        converged = True
        for index in torch.randperm(len(groups), generator=generator).tolist():
            group = groups[index]
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for entry in group.axes:
                others = [u for i, u in enumerate(uses[entry.key]) if i != _position(uses, entry)]
                w_b = b[entry.key]
                for use in others:
                    w_b = take(w_b, use.axis, perms[use.group].to(device[entry.key]), use.block)
                rows_a = _units(a[entry.key], entry.axis, group.size)
                rows_b = _units(w_b, entry.axis, group.size)
                cost += (rows_a @ rows_b.T).cpu()
            matrix = cost.numpy()
            _, columns = linear_sum_assignment(matrix, maximize=True)
            new = torch.as_tensor(columns, dtype=torch.long)
            old = perms[group.name]
            gain_new = float(cost[torch.arange(group.size), new].sum())
            gain_old = float(cost[torch.arange(group.size), old].sum())
            if gain_new - gain_old > GAIN_RTOL * max(1.0, abs(gain_old)):
                perms[group.name] = new
                converged = False
    return Matching(perms, sweeps=sweeps, converged=converged)


def permute_state(spec: SpecLike, perms: Mapping[str, torch.Tensor],
                  state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every group's permutation applied on its axes (``perm[i] = j``: unit i of
    the result is unit j of ``state``); keys no group touches are passed through unchanged. A
    group missing from ``perms`` is left as it is."""
    uses = _uses(spec)
    out = dict(state)
    for key, entries in uses.items():
        tensor = state[key]
        for use in entries:
            if use.group in perms:
                perm = torch.as_tensor(perms[use.group], dtype=torch.long)
                if perm.shape != (use.size,):
                    raise ValueError(f"the permutation of group {use.group!r} has shape "
                                     f"{tuple(perm.shape)}, expected ({use.size},)")
                tensor = take(tensor, use.axis, perm.to(tensor.device), use.block)
        out[key] = tensor
    return out


def take(tensor: torch.Tensor, axis: int, perm: torch.Tensor, block: int = 1) -> torch.Tensor:
    """``tensor`` with the units along ``axis`` (each ``block`` consecutive entries) reordered:
    unit i of the result is unit ``perm[i]``."""
    if block == 1:
        return tensor.index_select(axis, perm)
    shape = tuple(tensor.shape)
    split = (*shape[:axis], shape[axis] // block, block, *shape[axis + 1:])
    return tensor.reshape(split).index_select(axis, perm).reshape(shape)


def _units(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """(size, rest): row i holds everything of unit i (its block included)."""
    return tensor.movedim(axis, 0).reshape(size, -1)


def _uses(spec: SpecLike) -> dict[str, list[_Use]]:
    """For every key: the (group, axis, block) entries that permute it, in spec order."""
    uses: dict[str, list[_Use]] = {}
    for group in spec.groups:
        for entry in group.axes:
            uses.setdefault(entry.key, []).append(_Use(group.name, entry.axis, entry.block, group.size))
    return uses


def _position(uses: dict[str, list[_Use]], entry: AxisLike) -> int:
    """Which of its key's entries ``entry`` is (a key carries each axis at most once)."""
    for i, use in enumerate(uses[entry.key]):
        if use.axis == entry.axis:
            return i
    raise KeyError(entry.key)
