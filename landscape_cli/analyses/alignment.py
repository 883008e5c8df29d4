"""Permutation alignment of two checkpoints of one architecture (``interpolate --align weights``):
the permutation structure of a model traced with ``torch.fx``, weight matching on it
(``search/weight_matching.py``; Ainsworth et al. 2023, Entezari et al. 2022), and the permuted
state dict.

Hidden units can be permuted without changing the function: the rows of the layer that produces
them, its bias, a BatchNorm's or LayerNorm's per-unit vectors (running statistics included), and
the input columns (input channels) of the layers that consume them, all reordered by one
permutation. The trace follows each tensor's *unit axis* through the graph:

* ``nn.Linear`` / ``nn.Conv1d/2d/3d`` (groups=1) consume the units on their input axis and
  produce a new group on their output axis;
* ``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm``, ``nn.RMSNorm`` carry the units through, their
  per-unit parameters (and buffers) permuted with them;
* elementwise activations and functions (ReLU, GELU, Tanh, Sigmoid, SiLU, LeakyReLU, Dropout,
  ``torch.relu``, ``F.relu``, ``+ - * /`` with scalars, dtype casts, ``contiguous`` ...), softmax,
  pooling over the spatial axes (max / avg / adaptive, ``F.interpolate``), reductions (``mean``,
  ``sum``, ``amax``: over the unit axis they are invariant) and ``transpose`` / ``permute`` carry
  them through;
* ``flatten`` / ``view`` / ``reshape`` / ``squeeze`` / ``unsqueeze`` carry them when each unit
  stays one contiguous block of the new axis: a conv's channel after ``flatten(1)`` becomes a
  block of H·W input columns of the next Linear;
* an elementwise operation of two tensors with units (a residual addition ``a + b``) joins their
  groups into one (union–find);
* the model's inputs are not permuted, and a group that reaches an output, or is added to an
  unpermuted tensor along its unit axis, is fixed (not permuted): the identity is always allowed.

Anything else that touches permuted units is refused with a ``LandscapeError`` naming the layer
or node: a graph ``torch.fx`` cannot trace (data-dependent control flow), a custom autograd
function, a module type with parameters that is not listed (``nn.MultiheadAttention``,
``nn.Embedding``, ``nn.GroupNorm``, grouped or transposed convolutions ...), an operation that
mixes units (``matmul``, indexing, ``cat``, a reshape that splits units into heads), a layer
called twice, or a permuted parameter that is shared or read directly by the forward.
"""

from __future__ import annotations

import contextlib
import operator
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from landscape_cli.errors import LandscapeError, first_line
from landscape_cli.search.weight_matching import permute_state, weight_matching

SUPPORTED = ("--align weights supports chains of Linear/Conv/BatchNorm/LayerNorm with elementwise "
             "activations and residual additions")


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class PermutedAxis:
    """One axis of one state-dict tensor that a group permutes. With ``block`` > 1, unit i is
    the ``block`` consecutive entries i·block … (i+1)·block − 1 of the axis (a conv channel's
    spatial positions in a Linear's input columns after ``flatten``)."""

    key: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class PermutationGroup:
    """Hidden units that one permutation reorders: ``size`` units, named after the layer that
    produces them (the first one, when residual additions join several: ``layers`` lists all
    of them), and every tensor axis it permutes."""

    name: str
    size: int
    axes: tuple[PermutedAxis, ...]
    layers: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.key for a in self.axes))


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of a model, in the order the forward first produces them."""

    groups: tuple[PermutationGroup, ...]

    def group(self, name: str) -> PermutationGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    @property
    def keys(self) -> frozenset[str]:
        """Every state-dict key some group permutes."""
        return frozenset(a.key for g in self.groups for a in g.axes)

    @property
    def sizes(self) -> dict[str, int]:
        return {g.name: g.size for g in self.groups}


@dataclass(frozen=True)
class Alignment:
    """B aligned to A: ``state`` is B's state dict with ``perms`` applied (``perms[g][i] = j``:
    unit i of the aligned B is unit j of B), found in ``sweeps`` coordinate-descent sweeps
    (``converged``: the last one changed nothing); ``group_sizes`` per group."""

    state: dict[str, torch.Tensor]
    perms: dict[str, torch.Tensor]
    sweeps: int
    converged: bool
    group_sizes: dict[str, int]
    spec: PermutationSpec


# ----------------------------------------------------------------------------- public API


def permutation_spec(model: nn.Module, example_inputs: Any) -> PermutationSpec:
    """The permutation groups of ``model``, traced with ``torch.fx`` and shaped by one forward on
    ``example_inputs`` (a tensor or a tuple of positional inputs; run without gradients, in eval
    mode, the modules' modes restored). Raises ``LandscapeError`` naming the layer or node for
    a model outside the supported structure (module docstring)."""
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    graph_module = _trace(model)
    _propagate_shapes(model, graph_module, tuple(inputs))
    return _Walker(model, graph_module).spec()


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, torch.Tensor],
                      state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every group's permutation applied on its axes; keys no group touches
    (``num_batches_tracked`` among them) are passed through unchanged."""
    _check_state(spec, state, "the state dict")
    sizes = spec.sizes
    for name, perm in perms.items():
        if name not in sizes:
            raise ValueError(f"no permutation group {name!r} (groups: {', '.join(sizes)})")
        perm = torch.as_tensor(perm)
        if perm.shape != (sizes[name],) or not torch.equal(perm.sort().values.cpu(),
                                                           torch.arange(sizes[name])):
            raise ValueError(f"the permutation of group {name!r} is not a permutation of "
                             f"{sizes[name]} units")
    return permute_state(spec, perms, state)


def align(model: nn.Module, example_inputs: Any, state_a: Mapping[str, torch.Tensor],
          state_b: Mapping[str, torch.Tensor], *, max_iter: int = 100, seed: int = 0) -> Alignment:
    """Permute B's hidden units to match A's (weight matching over the traced groups)."""
    spec = permutation_spec(model, example_inputs)
    _check_state(spec, state_a, "checkpoint A")
    _check_state(spec, state_b, "checkpoint B")
    matching = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
    perms = dict(matching)
    return Alignment(state=apply_permutation(spec, perms, state_b), perms=perms,
                     sweeps=matching.sweeps, converged=matching.converged,
                     group_sizes=spec.sizes, spec=spec)


def _check_state(spec: PermutationSpec, state: Mapping[str, torch.Tensor], what: str) -> None:
    for group in spec.groups:
        for entry in group.axes:
            if entry.key not in state:
                raise LandscapeError(f"cannot align weights: {what} has no key '{entry.key}'")
            shape = tuple(state[entry.key].shape)
            if len(shape) <= entry.axis or shape[entry.axis] != group.size * entry.block:
                raise LandscapeError(
                    f"cannot align weights: '{entry.key}' in {what} has shape {shape}, "
                    f"expected {group.size * entry.block} along axis {entry.axis}")


# ----------------------------------------------------------------------------- tracing


def _refuse(where: str, why: str) -> LandscapeError:
    return LandscapeError(f"cannot align weights: {where}: {why}; {SUPPORTED}")


class _Opaque(Exception):
    """Raised inside the trace by an operation the graph cannot show (a custom autograd
    function)."""


class _Tracer(fx.Tracer):
    """The default tracer (torch.nn modules are leaves) that remembers in which layer a trace
    failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                try:
                    path = self.path_of_module(m)
                except NameError:
                    path = "?"
                self.failed_in = f"layer '{path}' ({type(m).__name__})"
            raise


@contextlib.contextmanager
def _refusing_autograd_functions() -> Iterator[None]:
    """While tracing: a custom ``torch.autograd.Function`` applied to traced values raises
    ``_Opaque`` (fx would otherwise inline its forward and hide the backward's contract)."""
    function = torch.autograd.Function
    original = function.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        leaves = pytree.tree_leaves((args, kwargs))
        if any(isinstance(leaf, fx.Proxy) for leaf in leaves):
            raise _Opaque(f"custom autograd function {cls.__qualname__} is opaque to the trace")
        return original.__func__(cls, *args, **kwargs)

    function.apply = classmethod(apply)
    try:
        yield
    finally:
        function.apply = original


class _Alone(_Tracer):
    """A tracer of one module's own forward: every submodule is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self.root


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        with _refusing_autograd_functions():
            graph = tracer.trace(model)
    except Exception as error:
        why = f"torch.fx cannot trace it ({first_line(error)}{_user_line(error)})"
        if tracer.failed_in is not None:
            raise _refuse(tracer.failed_in, why) from error
        # the root's own forward stopped the tracer before any layer ran (a decorated forward,
        # a signature fx cannot read): name the layer whose own code fx cannot trace
        deepest = _deepest_untraceable(model)
        if deepest is None:
            raise _refuse(f"the forward of {type(model).__name__}", why) from error
        path, module, inner = deepest
        raise _refuse(f"layer '{path}' ({type(module).__name__})",
                      f"torch.fx cannot trace it ({first_line(inner)}{_user_line(inner)}); the "
                      f"model's own forward fails first ({first_line(error)})") from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _deepest_untraceable(model: nn.Module) -> tuple[str, nn.Module, Exception] | None:
    """The deepest submodule (the first in ``named_modules`` order among the deepest) whose own
    forward, traced alone with its submodules as leaves, fx cannot trace; with the error."""
    found = None
    leaf = fx.Tracer().is_leaf_module
    for path, module in model.named_modules():
        if not path or leaf(module, path) or (found and found[0].count(".") >= path.count(".")):
            continue
        try:
            with _refusing_autograd_functions():
                _Alone().trace(module)
        except Exception as error:
            found = (path, module, error)
    return found


def _user_line(error: BaseException) -> str:
    """', at file.py:LINE' for the innermost frame outside torch and this module."""
    torch_dir = str(Path(torch.__file__).resolve().parent)
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        name = str(Path(frame.filename).resolve())
        if not name.startswith(torch_dir) and name != str(Path(__file__).resolve()):
            return f", at {Path(frame.filename).name}:{frame.lineno}"
    return ""


def _propagate_shapes(model: nn.Module, graph_module: fx.GraphModule, inputs: tuple) -> None:
    """Shapes of every node from one no-grad eval-mode forward (BatchNorm buffers untouched)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        graph_module.eval()
        with torch.no_grad():
            ShapeProp(graph_module).propagate(*inputs)
    except Exception as error:
        raise LandscapeError(f"cannot align weights: the traced model does not run on the example "
                             f"inputs ({type(error).__name__}: {first_line(error)})") from error
    finally:
        for module, mode in modes:
            module.training = mode


# ----------------------------------------------------------------------------- the walk


class _Units(NamedTuple):
    """A tensor's permuted axis: group ``group`` along ``dim``, each unit ``block`` entries."""

    group: int
    dim: int
    block: int


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Mish, nn.LeakyReLU, nn.ELU,
    nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LogSigmoid, nn.Tanhshrink, nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Softmax, nn.LogSoftmax, nn.Softmin,
)
_POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
    nn.LPPool2d: 2,
}
_NORMS = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))

#: Functions and methods (by name) whose tensor operands combine elementwise, with broadcasting.
_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "truediv", "div", "neg", "pos", "iadd", "isub", "imul", "itruediv",
    "add_", "sub_", "mul_", "div_", "maximum", "minimum", "relu", "relu_", "relu6", "gelu", "silu",
    "mish", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "softplus", "softsign",
    "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "logsigmoid", "tanhshrink", "threshold",
    "tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "log", "abs", "square", "sqrt", "rsqrt", "pow",
    "clamp", "clamp_", "clip", "erf", "sin", "cos", "dropout", "alpha_dropout",
    "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "softmax", "log_softmax",
    "softmin",
})
#: Methods whose result only depends on ``self`` elementwise (casts, copies).
_UNARY_METHODS = frozenset({
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type",
    "type_as", "cpu", "cuda", "requires_grad_",
})
_RESHAPES = frozenset({"flatten", "view", "reshape", "squeeze", "unsqueeze", "view_as",
                       "reshape_as", "unflatten"})
_REDUCTIONS = frozenset({"sum", "mean", "amax", "amin", "logsumexp", "nansum", "nanmean"})
_POOLS = {f"{kind}{k}d": k for k in (1, 2, 3) for kind in (
    "max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool")}
_SHAPE_QUERIES = frozenset({"size", "dim", "numel", "ndimension", "nelement"})
_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"})
_FUNCTION_MODULES = ("torch", "_operator", "operator", "builtins")


class _Walker:
    """One pass over the traced graph in order, following every tensor's unit axis."""

    def __init__(self, model: nn.Module, graph_module: fx.GraphModule) -> None:
        self.model = model
        self.graph_module = graph_module
        self.keys = set(model.state_dict())
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.names: list[str] = []
        self.sizes: list[int] = []
        self.axes: list[list[PermutedAxis]] = []
        self.units: dict[fx.Node, _Units | None] = {}
        self.called: set[str] = set()
        self.reads: list[fx.Node] = []

    # ---------------------------------------------------------------- union–find

    def _new(self, name: str, size: int) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(False)
        self.names.append(name)
        self.sizes.append(size)
        self.axes.append([])
        return len(self.parent) - 1

    def _find(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def _union(self, a: int, b: int) -> int:
        a, b = self._find(a), self._find(b)
        if a != b:
            a, b = min(a, b), max(a, b)          # the earlier group names the union
            self.parent[b] = a
            self.fixed[a] = self.fixed[a] or self.fixed[b]
        return a

    def _fix(self, units: _Units | None) -> None:
        if units is not None:
            self.fixed[self._find(units.group)] = True

    def _add(self, units: _Units, layer: str, attr: str, axis: int) -> None:
        key = f"{layer}.{attr}" if layer else attr
        if key in self.keys:
            self.axes[units.group].append(PermutedAxis(key, axis, units.block))

    # ---------------------------------------------------------------- the result

    def spec(self) -> PermutationSpec:
        for node in self.graph_module.graph.nodes:
            self.units[node] = self._visit(node)
            self._check(node)
        members: dict[int, list[int]] = {}
        for group in range(len(self.parent)):
            members.setdefault(self._find(group), []).append(group)
        groups = []
        for root, ids in sorted(members.items()):
            if self.fixed[root]:
                continue
            axes = tuple(dict.fromkeys(a for g in ids for a in self.axes[g]))
            groups.append(PermutationGroup(self.names[root], self.sizes[root], axes,
                                           tuple(self.names[g] for g in ids)))
        spec = PermutationSpec(tuple(groups))
        self._check_aliases(spec)
        return spec

    def _check(self, node: fx.Node) -> None:
        """The unit axis the walk assigned must fit the node's shape (a safety net)."""
        units = self.units[node]
        if units is None:
            return
        shape = _shape(node)
        size = self.sizes[self._find(units.group)]
        if shape is None or units.dim >= len(shape) or shape[units.dim] != size * units.block:
            raise _refuse(self._where(node), "cannot follow the permuted units through it")

    def _check_aliases(self, spec: PermutationSpec) -> None:
        permuted = spec.keys
        for node in self.reads:
            target = str(node.target)
            if target in permuted:
                raise _refuse(self._where(node), f"the forward reads the permuted parameter "
                                                 f"'{target}' directly")
        owners: dict[int, list[str]] = {}
        for name, tensor in [*self.model.named_parameters(remove_duplicate=False),
                             *self.model.named_buffers(remove_duplicate=False)]:
            owners.setdefault(id(tensor), []).append(name)
        for names in owners.values():
            if len(names) > 1 and any(n in permuted for n in names):
                raise _refuse(f"parameter '{names[0]}'", "it is shared with "
                              + ", ".join(f"'{n}'" for n in names[1:]))

    # ---------------------------------------------------------------- nodes

    def _visit(self, node: fx.Node) -> _Units | None:
        if node.op == "placeholder":
            return None
        if node.op == "get_attr":
            self.reads.append(node)
            return None
        if node.op == "output":
            for arg in node.all_input_nodes:
                self._fix(self.units.get(arg))
            return None
        if node.op == "call_module":
            return self._module(node)
        return self._function(node)

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"layer '{node.target}' ({type(self.graph_module.get_submodule(node.target)).__name__})"
        what = f".{node.target}()" if node.op == "call_method" else _name(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, kind = list(stack.values())[-1]
            layer = f"layer '{path}' ({getattr(kind, '__name__', kind)})"
        else:
            layer = f"the forward of {type(self.model).__name__}"
        return f"node '{node.name}' ({what}) in {layer}"

    def _inputs(self, node: fx.Node) -> list[_Units]:
        return [u for arg in node.all_input_nodes if (u := self._get(arg)) is not None]

    def _get(self, node: fx.Node) -> _Units | None:
        units = self.units.get(node)
        return None if units is None else units._replace(group=self._find(units.group))

    def _unknown(self, node: fx.Node, why: str = "it mixes or reorders the permuted units") -> None:
        if self._inputs(node):
            raise _refuse(self._where(node), why)

    # ---------------------------------------------------------------- modules

    def _module(self, node: fx.Node) -> _Units | None:
        name = str(node.target)
        module = self.graph_module.get_submodule(name)
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if has_state:
            if name in self.called:
                raise _refuse(self._where(node), "the layer is called more than once (shared weights)")
            self.called.add(name)
        inputs = node.all_input_nodes
        x = self._get(inputs[0]) if inputs else None
        if any(self._get(arg) is not None for arg in inputs[1:]):
            raise _refuse(self._where(node), "it takes permuted units in a second input")
        in_shape = _shape(inputs[0]) if inputs else None
        out_shape = _shape(node)
        if isinstance(module, nn.Linear):
            return self._linear(node, name, module, x, in_shape, out_shape)
        if isinstance(module, nn.modules.conv._ConvNd):
            return self._conv(node, name, module, x, in_shape, out_shape)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if x is not None and x.dim == 1:
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    self._add(x, name, attr, 0)
            return x
        if isinstance(module, _NORMS):
            if x is not None:
                normalized = len(module.normalized_shape)
                first = len(in_shape) - normalized
                if x.dim >= first:
                    for attr in ("weight", "bias"):
                        self._add(x, name, attr, x.dim - first)
            return x
        if isinstance(module, nn.PReLU):
            if x is not None and module.weight.numel() > 1:
                if x.dim != 1:
                    raise _refuse(self._where(node), "its per-channel slopes are not on the permuted axis")
                self._add(x, name, "weight", 0)
            return x
        if isinstance(module, _ELEMENTWISE_MODULES) and not has_state:
            return x
        if type(module) in _POOL_MODULES:
            if getattr(module, "return_indices", False):
                self._unknown(node, "a pooling layer that returns indices is not supported")
                return None
            return self._spatial(node, x, in_shape, _POOL_MODULES[type(module)])
        if isinstance(module, nn.Upsample):
            return self._spatial(node, x, in_shape, len(in_shape) - 2 if in_shape else 0)
        if isinstance(module, nn.Flatten | nn.Unflatten):
            return self._reshape(node, x, in_shape, out_shape)
        if has_state:
            raise _refuse(self._where(node), "this layer type is not supported")
        self._unknown(node, "this layer type is not supported")
        return None

    def _linear(self, node, name, module, x, in_shape, out_shape) -> _Units | None:
        if x is not None:
            if x.dim != len(in_shape) - 1:
                return x            # applied along another axis: per unit, units untouched
            self._add(x, name, "weight", 1)
        return self._produce(name, module.out_features, len(out_shape) - 1, ("weight", "bias"))

    def _conv(self, node, name, module, x, in_shape, out_shape) -> _Units | None:
        if module.transposed:
            raise _refuse(self._where(node), "transposed convolutions are not supported")
        if module.groups != 1:
            raise _refuse(self._where(node), "grouped convolutions are not supported")
        spatial = len(module.kernel_size)
        if x is not None:
            if x.dim != len(in_shape) - spatial - 1:
                raise _refuse(self._where(node), "the permuted units are not its input channels")
            self._add(x, name, "weight", 1)
        return self._produce(name, module.out_channels, len(out_shape) - spatial - 1, ("weight", "bias"))

    def _produce(self, name: str, size: int, dim: int, attrs: Sequence[str]) -> _Units | None:
        if size <= 1:
            return None
        units = _Units(self._new(name, size), dim, 1)
        for attr in attrs:
            self._add(units, name, attr, 0)
        return units

    # ---------------------------------------------------------------- functions and methods

    def _function(self, node: fx.Node) -> _Units | None:
        method = node.op == "call_method"
        target = node.target
        if not method and not _is_torch_function(target):
            self._unknown(node)
            return None
        name = str(target) if method else getattr(target, "__name__", "")
        if not method and target is getattr:
            attribute = node.args[1] if len(node.args) > 1 else None
            if attribute not in _ATTRIBUTES:
                self._unknown(node)
            return None
        if name in _SHAPE_QUERIES:
            return None
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        x = self._get(first) if first is not None else None
        in_shape = _shape(first)
        out_shape = _shape(node)
        if x is None and name not in _ELEMENTWISE and self._inputs(node):
            raise _refuse(self._where(node), "the permuted units reach it through an argument "
                                             "it cannot follow")
        if method and name in _UNARY_METHODS:
            return x
        if name in _ELEMENTWISE:
            return self._elementwise(node, out_shape)
        if name in _RESHAPES:
            return self._reshape(node, x, in_shape, out_shape)
        if name in ("transpose", "swapaxes", "permute", "t"):
            return self._transpose(node, x, in_shape, name)
        if name in _REDUCTIONS:
            return self._reduce(node, x, in_shape)
        if name in _POOLS:
            if node.kwargs.get("return_indices"):
                self._unknown(node, "a pooling function that returns indices is not supported")
                return None
            return self._spatial(node, x, in_shape, _POOLS[name])
        if name in ("interpolate", "upsample"):
            return self._spatial(node, x, in_shape, len(in_shape) - 2 if in_shape else 0)
        self._unknown(node)
        return None

    def _elementwise(self, node: fx.Node, out_shape) -> _Units | None:
        """Tensors combined entry by entry, with broadcasting: operands with units must have
        them on the same output axis (their groups join); an operand without units must not
        vary along that axis, or the units are fixed."""
        if out_shape is None:
            self._unknown(node)
            return None
        operands = [(u, _shape(arg)) for arg in node.all_input_nodes
                    if _shape(arg) is not None for u in [self._get(arg)]]
        placed = {(u.dim + len(out_shape) - len(shape), u.block) for u, shape in operands if u is not None}
        permuted = [u for u, _ in operands if u is not None]
        if not permuted:
            return None
        if len(placed) > 1:
            for u in permuted:
                self._fix(u)
            return None
        (dim, block), = placed
        group = permuted[0].group
        for u in permuted[1:]:
            group = self._union(group, u.group)
        result = _Units(group, dim, block)
        for u, shape in operands:
            if u is None:
                offset = dim - (len(out_shape) - len(shape))
                if offset >= 0 and shape[offset] != 1:
                    self._fix(result)
                    return None
        return result

    def _reshape(self, node: fx.Node, x: _Units | None, in_shape, out_shape) -> _Units | None:
        """A reshape keeps the units when each unit stays one contiguous block of one new axis
        whose leading axes hold the same number of entries as before."""
        if x is None:
            return None
        if out_shape is None:
            raise _refuse(self._where(node), "cannot follow the permuted units through it")
        size = self.sizes[x.group]
        prefix = _prod(in_shape[:x.dim])
        unit = x.block * _prod(in_shape[x.dim + 1:])      # entries per unit, after the prefix
        for dim in range(len(out_shape)):
            if _prod(out_shape[:dim]) != prefix:
                continue
            inner = _prod(out_shape[dim + 1:])
            if unit % inner == 0 and out_shape[dim] == size * (unit // inner):
                return _Units(x.group, dim, unit // inner)
        raise _refuse(self._where(node), f"it splits or merges the {size} permuted units of "
                                         f"'{self.names[x.group]}' with other axes")

    def _transpose(self, node: fx.Node, x: _Units | None, in_shape, name: str) -> _Units | None:
        if x is None:
            return None
        rank = len(in_shape)
        args = [0, 1] if name == "t" else [*node.args[1:], *node.kwargs.values()]
        if any(isinstance(a, fx.Node) for a in pytree.tree_leaves(args)):
            raise _refuse(self._where(node), "its axes are not constants")
        if name == "permute":
            dims = list(args[0]) if len(args) == 1 and isinstance(args[0], Sequence) else list(args)
            dims = [d % rank for d in dims]
            return x._replace(dim=dims.index(x.dim))
        first, second = (a % rank for a in args[:2])
        swap = {first: second, second: first}
        return x._replace(dim=swap.get(x.dim, x.dim))

    def _reduce(self, node: fx.Node, x: _Units | None, in_shape) -> _Units | None:
        """A reduction over the unit axis is invariant to the permutation; over others it keeps
        the units (on a shifted axis without ``keepdim``)."""
        if x is None:
            return None
        args = list(node.args[1:])
        dim = node.kwargs.get("dim", args[0] if args else None)
        keepdim = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        if any(isinstance(a, fx.Node) for a in pytree.tree_leaves([dim, keepdim])):
            raise _refuse(self._where(node), "its axes are not constants")
        rank = len(in_shape)
        if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
            return None
        dims = {d % rank for d in (dim if isinstance(dim, Sequence) else [dim])}
        if x.dim in dims:
            return None
        return x if keepdim else x._replace(dim=x.dim - sum(d < x.dim for d in dims))

    def _spatial(self, node: fx.Node, x: _Units | None, in_shape, spatial: int) -> _Units | None:
        """Pooling / resizing over the last ``spatial`` axes: the units must be on another."""
        if x is None:
            return None
        if x.dim >= len(in_shape) - spatial:
            raise _refuse(self._where(node), "it pools over the permuted units")
        return x


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


def _is_torch_function(target: Any) -> bool:
    module = getattr(target, "__module__", None) or ""
    if target is operator.getitem:
        return False                       # indexing: refused on permuted units
    return module.split(".")[0] in _FUNCTION_MODULES
