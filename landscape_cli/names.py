"""The names a user types or reads (config values, option choices, report settings), declared
once and torch-free: the config, the options, ``--help``, the schema and the code that acts on
them all import them from here."""

from __future__ import annotations

from typing import Literal

AUTO, CACHED, STREAM, FD = "auto", "cached", "stream", "fd"
#: ``engine.strategy`` / ``--hvp-strategy``: keep the first-order graph, stream the data, or
#: keep it where it fits half the memory budget (``engine/plan.py``); or finite differences of
#: ordinary gradients, for models without double backward (``engine/hvp.py``)
STRATEGIES = (AUTO, CACHED, STREAM, FD)
Strategy = Literal[STRATEGIES]
#: ``engine.shard`` / ``--shard-model``: the model whole in every process, or sharded over the
#: ranks of a torchrun launch with FSDP2 (``engine/sharding.py``)
NO_SHARD, FSDP = "none", "fsdp"
SHARDS = (NO_SHARD, FSDP)
Shard = Literal[SHARDS]
#: ``precision`` / ``--precision`` (Lightning's names): how the passes run, with the dtype each
#: holds the weights in (``dtype``); the mixed ones run the forward and backward passes under
#: autocast over float32 weights (``engine/problem.py``)
PRECISIONS = {"32": "float32", "64": "float64", "bf16-mixed": "float32", "16-mixed": "float32"}
Precision = Literal[tuple(PRECISIONS)]
#: how attention runs (``settings.attention``): SDPA's math backend, whose double backward the
#: exact products need, or its fused kernels (flash, memory-efficient) under ``fd``
SDPA_MATH, SDPA_FUSED = "sdpa-math", "sdpa-fused"

#: the trace estimators (``linalg/trace.py``): Hutch++ (Meyer et al. 2021), Hutchinson (1989)
TRACE_METHODS = ("hutchpp", "hutchinson")
TraceMethod = Literal[TRACE_METHODS]

#: ``--curvature``: the matrix measured (``engine/curvature.py``): the Hessian, the generalised
#: Gauss-Newton matrix, the Fisher at sampled labels, the empirical Fisher
HESSIAN = "hessian"
CURVATURES = (HESSIAN, "ggn", "fisher", "empirical-fisher")
CURVATURE_HELP = ("The matrix measured: hessian; ggn (JᵀH_out J, exact products); fisher (at labels "
                  "sampled from the model, under the seed); empirical-fisher (mean of per-sample "
                  "gradient outer products). The others need a known loss.factory criterion.")
