"""Shared fixtures: the real MLP with its dense Hessian, and the in-process CLI runner.
Shared functions and constants live in ``helpers/`` (importable from any folder)."""

from __future__ import annotations

import json

import pytest
from helpers.exact import dense_hessian, full_batch_loss
from helpers.samples import MLP_CKPT, digits, loaded
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def mlp_exact():
    """The real MLP on 600 real digits (uneven last batch of 88) and its dense Hessian."""
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600")
    x, y = digits(600)
    reference = full_batch_loss(run.problem.objective.model, run.problem, x, y)
    return run.problem, dense_hessian(reference, run.problem.theta0), reference


@pytest.fixture
def cli():
    """Run the real CLI in-process; returns (exit code, parsed JSON or None, result)."""
    from landscape_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            doc = None
        return result.exit_code, doc, result

    return invoke
