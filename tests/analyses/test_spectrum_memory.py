"""The Krylov basis within the memory budget through the real CLI (issue 27 §0): a small
``--memory-budget`` bounds the basis and Lanczos restarts with the same eigenvalues; a budget that
holds nothing an algorithm works with is one line and exit 2, before any product."""

from __future__ import annotations

import pytest
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT, TRANSFORMER_CKPT

from landscape_cli.linalg.memory import lanczos_bytes, restart_minimum

#: the sample transformer's parameters (configs/char_transformer.yaml)
TRANSFORMER_N = 17_172


def _top3(*extra: str) -> dict:
    ran = invoke(["spectrum", str(TRANSFORMER_CKPT), "-c", str(CONFIGS / "char_transformer.yaml"),
                  "--top", "3", "--set", "data.max_samples=64", "--json", *extra])
    assert ran.returncode == 0, ran.detail()
    return ran.json()


@pytest.mark.slow
def test_a_small_budget_restarts_the_transformer_with_the_same_top3():
    """On 64 windows, the kept graph (measured) and the fewest vectors for 3 pairs (10 of 17,172
    numbers, and the working ones): the bounded basis is restarted (more steps than vectors)
    and gives the unbounded run's top 3, each within the two runs' residuals."""
    graph = _top3("--hvp-strategy", "cached", "--max-hvps", "1")["settings"]["cached_graph_mb"]
    rows = restart_minimum(3)
    # the report rounds the graph to 1e-3 MiB, and the bounded run, whose budget joins fewer
    # batches, keeps a graph a few hundred bytes larger: 8 KiB more holds no further basis row
    # (134 KiB)
    budget = lanczos_bytes(TRANSFORMER_N, rows, 3, restarted=True) + round(graph * 2**20) + 8192
    bounded = _top3("--memory-budget", str(budget), "--hvp-strategy", "cached")
    whole = _top3()
    assert whole["results"]["basis"] == {"storage": "float64", "restarted": False,
                                         "max_vectors": TRANSFORMER_N}
    assert bounded["results"]["basis"] == {"storage": "float64", "restarted": True,
                                           "max_vectors": rows}
    assert bounded["results"]["lanczos_steps"] > rows
    for run in (bounded, whole):
        assert all(run["results"]["top_converged"])
    pairs = zip(bounded["results"]["top_eigenvalues"], bounded["results"]["top_residuals"],
                whole["results"]["top_eigenvalues"], whole["results"]["top_residuals"])
    for value, residual, reference, reference_residual in pairs:
        assert abs(value - reference) <= residual + reference_residual


@pytest.mark.parametrize(("command", "needles"), [
    (["spectrum", "--top", "1"], ["Lanczos for 1 eigenpair(s) of 2,410 parameters"]),
    (["trace"], ["The trace of 2,410 parameters"]),
    (["sharpness", "--measures", "eps_sharpness"], ["The eps_sharpness ascent over 2,410 parameters"]),
])
def test_an_impossible_budget_is_one_line_and_exit_2(command, needles):
    """Every algorithm plans its own vectors before its first product (the ascent: 6 of n)."""
    ran = invoke([command[0], str(MLP_CKPT), "--memory-budget", "1KB", *command[1:]])
    assert_one_error(ran, [*needles, "--memory-budget by",
                           "--hvp-strategy stream or fd (no kept graph)"])
