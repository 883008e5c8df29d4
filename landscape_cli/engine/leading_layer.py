"""The model's leading linear layer, for evaluating weighted sums of weight vectors.

A layer that is linear in its weights and sees the model's input directly (a ``Linear`` or a
convolution, before anything with parameters or buffers) gives, at θ = Σⱼ wⱼθⱼ, the output
Σⱼ wⱼ·layer(X; Wⱼ, bⱼ): along a plane of P points through m weight vectors, m products with X
per batch instead of P (W(x, y)·X = W₀X + x·UX + y·VX; issue 32 §4). ``torch.fx`` finds the layer
and checks that its input is a function of the model's input alone and that nothing else uses
its parameters; a model that fx cannot trace has none (and is evaluated as before).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

#: the layers linear in their weights whose output replaces cheaply, by exact type: a subclass
#: may add weights its output is not linear in (a weight-normalised or LoRA Linear)
LINEAR_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LeadingLayer:
    """The model's leading linear layer: its module path and the parameters it owns."""

    path: str
    module: nn.Module
    #: the parameters' names in the model (``path.weight``, ``path.bias``), in the module's order
    parameters: tuple[str, ...]

    @property
    def fan_in(self) -> int:
        """Multiply-adds per output element: what a weighted sum of m outputs (m per element)
        saves against."""
        if isinstance(self.module, nn.Linear):
            return self.module.in_features
        return self.module.in_channels // self.module.groups * math.prod(self.module.kernel_size)

    def inputs(self, forward: Callable[[], Any]) -> torch.Tensor | None:
        """The layer's input in the forward pass ``forward``, or None where the pass calls it
        other than once (a loss that runs the model on two inputs: one replaced output would
        stand for both)."""
        seen: list[torch.Tensor] = []
        handle = self.module.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            forward()
        finally:
            handle.remove()
        return seen[0] if len(seen) == 1 else None

    def outputs(self, inputs: torch.Tensor, weights: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The layer's output at each set of its parameters (by local name), stacked."""
        return torch.stack([torch.func.functional_call(self.module, w, (inputs,)) for w in weights])

    @contextmanager
    def replaced(self, output: Callable[[], torch.Tensor]) -> Iterator[None]:
        """Within the block, the layer returns ``output()`` instead of computing its own."""
        self.module.forward = lambda *args, **kwargs: output()
        try:
            yield
        finally:
            del self.module.forward


def traced(model: nn.Module) -> fx.Graph | None:
    """The model's forward pass as one static graph, or None where fx cannot trace it (Python
    control flow on the data, ``.item()``, calls fx does not know): such a forward may do
    something else on other data, or at other weights."""
    try:
        return fx.symbolic_trace(model).graph
    except Exception:  # whatever stops the trace, the model has no static graph
        return None


def leading_layer(model: nn.Module, graph: fx.Graph | None) -> LeadingLayer | None:
    """The model's leading linear layer in its ``traced`` graph, or None where there is none, or
    no graph."""
    if graph is None:
        return None
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module"]
    first = next((n for n in calls if _stateful(modules[n.target])), None)
    if first is None or type(modules[first.target]) not in LINEAR_LAYERS:
        return None
    module = modules[first.target]
    if (sum(n.target == first.target for n in calls) != 1 or len(first.args) != 1 or first.kwargs
            or not _parameter_free(first.args[0], modules)
            or any(n.op == "get_attr" and str(n.target).startswith(f"{first.target}.")
                   for n in graph.nodes)):
        return None
    names = tuple(f"{first.target}.{name}" for name, _ in module.named_parameters())
    shared = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name not in names}
    if any(id(p) in shared for p in module.parameters()):
        return None  # tied to another layer's weights
    return LeadingLayer(first.target, module, names)


def _stateful(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _parameter_free(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is computed from the model's inputs without parameters or buffers."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if not isinstance(current, fx.Node) or current in seen:
            continue
        seen.add(current)
        if current.op == "get_attr" or (current.op == "call_module" and _stateful(modules[current.target])):
            return False
        todo.extend(current.all_input_nodes)
    return True
