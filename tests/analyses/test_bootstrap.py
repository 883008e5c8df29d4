"""``--bootstrap B`` (issue 31 §3): a data interval that covers the population's λ_max about
95% of the time on linear regression; and B = 0 changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT
from torch import nn

from landscape_cli.analyses import bootstrap
from landscape_cli.analyses.spectrum import spectrum
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.linalg.operator import DenseOperator
from landscape_cli.loading.data import Batches

#: x ~ N(0, Σ): MSELoss's population Hessian is 2Σ, whose λ_max is 8
SCALES = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
POPULATION_LAMBDA_MAX = 8.0


def interval(seed: int, samples: int = 200, batch: int = 10, resamples: int = 100) -> tuple[float, float]:
    """The data interval of λ_max on one sample of the population: the resamples go through
    ``bootstrap`` as the CLI's do, each resample's Hessian Σ_b w_b·2X_bᵀX_b/|b| held dense (the
    engine's products on it are checked in the CLI test below)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, generator=generator, dtype=torch.float64) * SCALES
    y = torch.randn(samples, 1, generator=generator, dtype=torch.float64)
    batches = Batches(list(zip(x.split(batch), y.split(batch))), [batch] * (samples // batch))
    problem = build_problem(nn.Linear(3, 1, bias=False).double(), criterion_loss(nn.MSELoss()), batches,
                            device=torch.device("cpu"), dtype=torch.float64)
    per_batch = torch.stack([2 * xb.T @ xb / len(xb) for xb in x.split(batch)])

    def operator_of(p):
        weights = torch.tensor(p.weights, dtype=torch.float64)
        return DenseOperator((weights[:, None, None] * per_batch).sum(dim=0))

    found = spectrum(operator_of(problem), top=1, tol=1e-10, seed=seed)
    if seed == 0:  # the dense Hessian is the engine's
        engine = spectrum(HVPEngine(problem), top=1, tol=1e-10).top_eigenvalues[0]
        assert found.top_eigenvalues[0] == pytest.approx(engine, rel=1e-9)
    return bootstrap.top_eigenvalues(bootstrap.Resamples(problem, resamples, seed), operator_of,
                                     found.top_vectors, 1, 1e-10)[0]


@pytest.mark.slow
def test_the_data_interval_covers_the_population_lambda_max_about_95_percent_of_the_time():
    covered = [low <= POPULATION_LAMBDA_MAX <= high for low, high in map(interval, range(200))]
    assert 0.88 <= sum(covered) / len(covered) <= 0.99, sum(covered)


def test_no_bootstrap_changes_nothing():
    small = ["-c", CONFIGS / "mlp.yaml", "--set", "data.max_samples=300", "--json"]
    plain = json.loads(invoke(["spectrum", MLP_CKPT, *small, "--top", "2"]).stdout)["results"]
    zero = json.loads(invoke(["spectrum", MLP_CKPT, *small, "--top", "2", "--bootstrap", "0"]).stdout)
    zero = zero["results"]
    assert zero == plain and "top_data_ci95" not in zero
    resampled = json.loads(invoke(["trace", MLP_CKPT, *small, "--bootstrap", "5", "--max-hvps", "30"]
                                  ).stdout)
    low, high = resampled["results"]["data_ci95"]
    assert low < resampled["results"]["trace"] < high and resampled["results"]["bootstrap"]["resamples"] == 5


def test_samples_are_resampled_into_batches_of_the_same_sizes_and_sharpness_reports_its_intervals():
    x = torch.arange(25, dtype=torch.float64)[:, None].repeat(1, 3)
    y = torch.zeros(25, 1, dtype=torch.float64)
    batches = Batches([(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])], [10, 10, 5])
    problem = build_problem(nn.Linear(3, 1, bias=False).double(), criterion_loss(nn.MSELoss()), batches,
                            device=torch.device("cpu"), dtype=torch.float64)
    resampled = list(bootstrap.Resamples(problem, 4, seed=3, unit="sample"))
    assert len(resampled) == 4
    for p in resampled:
        assert [len(b[0]) for b in p.batches] == [10, 10, 5] and p.weights == problem.weights
        drawn = torch.cat([b[0][:, 0] for b in p.batches])
        assert set(drawn.tolist()) <= set(range(25)) and len(set(drawn.tolist())) < 25  # with replacement

    small = ["-c", CONFIGS / "mlp.yaml", "--set", "data.max_samples=300", "--json"]
    ran = invoke(["sharpness", MLP_CKPT, *small, "--measures", "lambda_max,trace_per_param",
                  "--bootstrap", "6", "--max-hvps", "30"])
    measures = json.loads(ran.stdout)["results"]["measures"]
    for name in ("lambda_max", "trace_per_param"):
        low, high = measures[name]["data_ci95"]
        assert low < high and low <= measures[name]["value"] * 1.5


def test_resampling_samples_of_streamed_data_is_one_line():
    from helpers.adversarial import assert_one_error

    assert_one_error(invoke(["spectrum", MLP_CKPT, "-c", CONFIGS / "mlp.yaml", "--top", "1",
                             "--set", "data.max_samples=200", "--set", "data.stream=true",
                             "--bootstrap", "2", "--bootstrap-unit", "sample"]),
                     ["--bootstrap-unit sample", "--bootstrap-unit batch"])
