"""Shared fixtures: the real MLP with its dense Hessian, and the in-process CLI runner.
Shared functions and constants live in ``helpers/`` (importable from any folder)."""

from __future__ import annotations

import pytest
from helpers.exact import dense_hessian, full_batch_loss
from helpers.runners import invoke
from helpers.samples import MLP_CKPT, digits, loaded


@pytest.fixture(scope="session")
def mlp_exact():
    """The real MLP on 600 real digits (uneven last batch of 88) and its dense Hessian."""
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600")
    x, y = digits(600)
    reference = full_batch_loss(run.problem.objective.model, run.problem, x, y)
    return run.problem, dense_hessian(reference, run.problem.theta0), reference


@pytest.fixture
def cli():
    """Run the real CLI in-process (``helpers.runners.invoke``); returns (exit code, parsed
    JSON or None, the ``Ran``)."""

    def run(*args: str):
        ran = invoke(args)
        try:
            doc = ran.json()
        except ValueError:
            doc = None
        return ran.returncode, doc, ran

    return run


@pytest.fixture(autouse=True)
def fixed_terminal(monkeypatch):
    """In-process renderings (Rich tables, Typer's help) at one width whatever the caller's
    terminal: what a test expects to read must not depend on where it runs (issue 26, defect 6;
    the README examples run at this width too)."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "40")
