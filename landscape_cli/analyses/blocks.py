"""``spectrum --per-block``: the spectrum of each diagonal block H_bb of the Hessian, and how
much the blocks' spectra differ (Zhang et al. 2024, "Why Transformers Need Adam: A Hessian
Perspective": SGD falls behind Adam where the blocks' spectra are heterogeneous).

Blocks (``--blocks``): ``tensor`` (each parameter tensor), ``module`` (each module's parameters
together, as ``trace --per-layer`` groups them) or ``NAME=GLOB,...`` (named groups of parameter
names; a NAME may repeat to add globs; the parameters no glob matches form one more block,
``other``, so that the blocks always cover every analysed parameter).

Each block's top eigenvalues come from Lanczos on A_bb (``analyses/spectrum.py``), its density
from SLQ (``analyses/density.py``); all blocks' products are shared round by round
(``linalg/lockstep.py``), so one engine call multiplies a row of every running block.

Heterogeneity (JS⁰ of Zhang et al., there at initialisation, here at the checkpoint): every
block's SLQ measure (its nodes θ and weights τ, averaged over runs) is broadened by one common
Gaussian of width σ on one common grid t₁..t_M (from min λ_min − 5σ to max λ_max + 5σ over the
blocks, spacing ≤ σ, at least 1,000 points), and normalised to a probability vector
p_b(i) = φ_b(tᵢ)/Σⱼ φ_b(tⱼ). Then
    JS(p, q) = √(½ KL(p‖m) + ½ KL(q‖m)),  m = (p + q)/2,  logarithms base 2,
the Jensen–Shannon distance, in [0, 1] (0: the same density, 1: disjoint supports), and
JS⁰ = the mean of JS(p_b, p_c) over all pairs b < c. σ is ``--sigma`` if given, else the
quadrature's resolution over the common range, (max λ_max − min λ_min)/steps (as one density's
default, ``analyses.density.default_sigma``): one σ for all, so that blocks are compared in
absolute λ, at a width no block's quadrature can resolve below.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from landscape_cli.analyses.density import MAX_GRID_POINTS, default_sigma, spectral_density
from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.analyses.trace import module_groups
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.lockstep import in_lockstep
from landscape_cli.linalg.memory import lanczos_bytes, restart_minimum
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.slq import gaussian_density
from landscape_cli.results.blocks import BLOCK_TYPES, BlockSpectrum
from landscape_cli.results.density import DensityResult

#: the block that holds the parameters no ``NAME=GLOB`` group matches
OTHER = "other"


@dataclass(frozen=True)
class BlockSpec:
    """``--blocks`` parsed: ``tensor``, ``module``, or named glob groups (name → globs)."""

    text: str
    kind: str
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()


def parse_blocks(text: str) -> BlockSpec:
    """``tensor``, ``module`` or ``NAME=GLOB,...`` (a NAME may repeat), checked before loading."""
    if text in ("tensor", "module"):
        return BlockSpec(text, text)
    groups: dict[str, list[str]] = {}
    for part in text.split(","):
        name, equals, glob = (piece.strip() for piece in part.partition("="))
        if not equals or not name or not glob:
            raise LandscapeError(f"--blocks {text!r}: expected tensor, module or NAME=GLOB,... "
                                 f"(e.g. 'attn=*.attn.*,mlp=*.mlp.*'); got {part.strip()!r}")
        if name == OTHER:
            raise LandscapeError(f"--blocks {text!r}: the name {OTHER!r} is kept for the "
                                 "parameters no group matches; choose another")
        groups.setdefault(name, []).append(glob)
    return BlockSpec(text, "groups", tuple((name, tuple(globs)) for name, globs in groups.items()))


def form_blocks(spec: BlockSpec, names: list[str]) -> dict[str, list[str]]:
    """Block name → its parameter names, in parameter order; a parameter is in one block."""
    if spec.kind == "tensor":
        return {name: [name] for name in names}
    if spec.kind == "module":
        return module_groups(names, dict(zip(names, names)))
    blocks: dict[str, list[str]] = {name: [] for name, _ in spec.groups}
    owner: dict[str, str] = {}
    for parameter in names:
        for name, globs in spec.groups:
            if any(fnmatch.fnmatchcase(parameter, glob) for glob in globs):
                if parameter in owner:
                    raise LandscapeError(f"--blocks: parameter {parameter!r} matches both "
                                         f"{owner[parameter]!r} and {name!r}; a parameter may be "
                                         "in one block only")
                owner[parameter] = name
                blocks[name].append(parameter)
    empty = [name for name, members in blocks.items() if not members]
    if empty:
        sample = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
        raise LandscapeError(f"--blocks: no analysed parameter matches group {empty[0]!r} "
                             f"(parameters: {sample})")
    rest = [parameter for parameter in names if parameter not in owner]
    return {**blocks, **({OTHER: rest} if rest else {})}


# ----------------------------------------------------------------------------- block types

_ATTENTION = re.compile(r"attn|attention|mha")
#: the last module name inside an attention module → the block type
_ATTENTION_PARTS = {
    "attention_q": {"q", "q_proj", "query", "wq", "to_q", "q_lin"},
    "attention_k": {"k", "k_proj", "key", "wk", "to_k", "k_lin"},
    "attention_v": {"v", "v_proj", "value", "wv", "to_v", "v_lin"},
    "attention_qkv": {"qkv", "c_attn", "in_proj", "query_key_value", "wqkv", "qkv_proj"},
    "attention_out": {"o", "o_proj", "out", "out_proj", "c_proj", "dense", "wo", "to_out",
                      "proj", "out_lin", "output"},
}
_MLP = re.compile(r"mlp|ffn|feed_?forward|intermediate|fc\d|c_fc|gate_proj|up_proj|down_proj|"
                  r"^w[123]$")
_NORM = re.compile(r"norm|^ln|^bn\d*$")
_EMBEDDING = re.compile(r"embed|^wte$|^wpe$|tok_emb|pos_emb")


def parameter_type(name: str, kind: str) -> str:
    """The type of a parameter from its module's class name (``kind``: ``Embedding`` and the
    ``*Norm*`` layers say it) and else its dotted name (GPT-2, LLaMA, BERT, nn.Transformer and
    timm spellings); ``other`` when neither tells."""
    if "Embedding" in kind:
        return "embedding"
    if "Norm" in kind:
        return "norm"
    *modules, leaf = name.lower().split(".")
    if leaf.endswith("_weight") or leaf.endswith("_bias"):  # nn.MultiheadAttention's own
        modules.append(leaf.rpartition("_")[0])
    if any(_NORM.search(m) for m in modules[-1:]):
        return "norm"
    if any(_EMBEDDING.search(m) for m in modules):
        return "embedding"
    if any(_ATTENTION.search(m) for m in modules[:-1]) or "MultiheadAttention" in kind:
        last = modules[-1] if modules else ""
        return next((kind for kind, parts in _ATTENTION_PARTS.items() if last in parts), "other")
    if any(_MLP.search(m) for m in modules):
        return "mlp"
    return "other"


def module_kinds(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Each parameter's module class name (``parameter_type`` reads it)."""
    return {name: type(model.get_submodule(name.rpartition(".")[0])).__name__ for name in names}


def block_type(parameters: list[str], kinds: dict[str, str]) -> str:
    """The parameters' common type, ``other`` where they differ."""
    found = {parameter_type(p, kinds.get(p, "")) for p in parameters}
    return found.pop() if len(found) == 1 else "other"


# ----------------------------------------------------------------------------- heterogeneity


def js_heterogeneity(densities: list[DensityResult], steps: int,
                     sigma: float | None = None) -> tuple[float, float]:
    """JS⁰: the mean pairwise Jensen–Shannon distance (base 2) of the blocks' densities on a
    common grid at a common σ (module docstring); returns (JS⁰, σ)."""
    low = min(d.lambda_min for d in densities)
    high = max(d.lambda_max for d in densities)
    sigma = default_sigma(low, high, steps) if sigma is None else float(sigma)
    points = min(MAX_GRID_POINTS, max(1000, math.ceil((high - low) / sigma) + 11))
    grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, points, dtype=torch.float64)
    rows = []
    for d in densities:
        nodes = torch.tensor([x for run in d.nodes for x in run], dtype=torch.float64)
        weights = torch.tensor([w for run in d.weights for w in run], dtype=torch.float64)
        phi = gaussian_density(nodes[None], weights[None] / len(d.nodes), grid, sigma)
        rows.append(phi / phi.sum())
    p = torch.stack(rows)
    distances = []
    for b in range(len(p) - 1):
        q, mean = p[b + 1:], (p[b] + p[b + 1:]) / 2
        divergence = (torch.xlogy(p[b], p[b]) - torch.xlogy(p[b], mean)
                      + torch.xlogy(q, q) - torch.xlogy(q, mean)).sum(dim=1) / (2 * math.log(2))
        distances.append(divergence.clamp(0, 1).sqrt())
    return float(torch.cat(distances).mean()), sigma


# ----------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class PerBlock:
    """The blocks' spectra grouped by type, and with densities their heterogeneity."""

    blocks: list[BlockSpectrum]
    heterogeneity: float | None
    sigma: float | None
    notes: list[str]


def per_block(operator: LinearOperator, blocks: dict[str, list[str]],
              slices: dict[str, slice], kinds: dict[str, str], *, top: int, tol: float,
              max_hvps: int | None, seed: int, density: dict | None = None,
              callback: Callable[[int, int], None] | None = None) -> PerBlock:
    """Top-``top`` eigenvalues of every block (and with ``density``, the keyword arguments of
    ``spectral_density``: runs, steps, sigma, its SLQ density), the products of all blocks
    shared (``linalg.lockstep.in_lockstep``); blocks listed by type (``BLOCK_TYPES``), in
    parameter order within a type."""
    names = list(blocks)

    def analyse(index: int, block: LinearOperator) -> BlockSpectrum:
        n = block.size
        found = spectrum(block, top=top, tol=tol, max_hvps=min(n, max_hvps or n), seed=seed)
        estimate = (None if density is None else
                    spectral_density(block, seed=seed, **density))
        parameters = blocks[names[index]]
        return BlockSpectrum(
            name=names[index], type=block_type(parameters, kinds), n_params=n,
            parameters=parameters, top_eigenvalues=found.top_eigenvalues,
            top_residuals=found.top_residuals, top_converged=found.top_converged,
            lanczos_steps=found.lanczos_steps, residual_floor=found.residual_floor,
            density=estimate, notes=found.notes)

    rows = max(top, density["runs"] if density else 1)
    def least(size: int) -> int:  # a restarted float32 basis, the fewest Lanczos works with
        wanted = min(top, size)
        return lanczos_bytes(size, min(size, restart_minimum(wanted)), wanted, torch.float32,
                             restarted=True)

    found = in_lockstep(operator, [[slices[p] for p in blocks[name]] for name in names], analyse,
                        rows=rows, least=least, callback=callback)
    found.sort(key=lambda block: BLOCK_TYPES.index(block.type))  # stable: parameter order
    notes, heterogeneity, sigma = [], None, None
    if density is not None and len(found) > 1:
        heterogeneity, sigma = js_heterogeneity([b.density for b in found], density["steps"],
                                                density.get("sigma"))
    elif density is not None:
        notes.append("one block: the heterogeneity of the block densities needs two or more")
    return PerBlock(found, heterogeneity, sigma, notes)
