"""``landscape sharpness`` (issue 19): every measure against a closed form on quadratics, scale
invariance on a reparametrised ReLU MLP, agreement with ``spectrum``, ascent beating random
search, determinism, and bad input."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import signal
import subprocess
import time

import pytest
import torch
from helpers.adversarial import assert_one_error, listing, write_config
from helpers.quadratic import save_quadratic_checkpoint, symmetric_with_spectrum, write_quadratic_config
from helpers.runners import invoke, start_process
from helpers.samples import CNN_CKPT, CONFIGS, MLP_CKPT, digits, fit, loaded
from helpers.samples import MLP_CKPT as MLP
from torch import nn

import landscape_cli
from landscape_cli.analyses.sharpness import SharpnessOptions, sharpness
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import build_problem, criterion_loss
from landscape_cli.estimate import CostEstimate
from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.loading.data import Batches
from landscape_cli.results.sharpness import MEASURES
from landscape_cli.search.ascent import Ball, ascend, checkpoints

MLP_CONFIG = CONFIGS / "mlp.yaml"
SMALL = ["data.max_samples=300"]
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- quadratics


class Centered(nn.Module):
    """forward(x) = ½(θ−θ*)ᵀA(θ−θ*), its parameter θ starting at θ* (the batch only sets the
    device): a minimum with loss 0 and Hessian A."""

    def __init__(self, matrix: torch.Tensor, star: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(star.clone())
        self.register_buffer("matrix", matrix)
        self.register_buffer("star", star.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.theta - self.star
        return 0.5 * d @ (self.matrix @ d) + 0 * x.sum()


def quadratic_engine(matrix: torch.Tensor, star: torch.Tensor) -> HVPEngine:
    batches = Batches([(torch.zeros(2, 1), torch.zeros(2))], [2])
    problem = build_problem(Centered(matrix, star), lambda m, b: m(b[0]), batches, device=CPU,
                            dtype=torch.float64)
    return HVPEngine(problem)


def star(n: int, seed: int) -> torch.Tensor:
    """θ* away from 0 (the box and the magnitude-aware sets depend on |θ*|)."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


#: λ_max = 10 above 19 eigenvalues in [0.1, 1]: on the sphere, one normalised step of Auto-PGD
#: shrinks the other directions' share by about (1 + 2·1/10)/(1 + 2) = 0.4, so 20 steps leave
#: ~0.4^40 ≈ 1e-16 of the loss outside the top eigenvector: ½ρ²λ_max to far better than 1e-4.
GAPPED = torch.cat([torch.tensor([10.0]), torch.linspace(0.1, 1.0, 19)]).double()


def test_quadratic_worst_case_average_case_and_noise_consistency_match_closed_forms():
    engine = quadratic_engine(symmetric_with_spectrum(GAPPED, seed=3), star(20, seed=4))
    assert engine.loss() == 0.0
    rho, sigma = 0.05, 0.01
    result = sharpness(engine, SharpnessOptions(
        measures=("worst_case", "average_case", "noise_consistency"), rho=rho, sigma=sigma,
        steps=20, samples=64))
    m = result.measures

    worst = m["worst_case"]
    expected = 0.5 * rho**2 * float(GAPPED.max())
    assert worst.value == pytest.approx(expected, rel=1e-4), (worst.value, expected)
    assert worst.value <= expected * (1 + 1e-12)  # a point of the ball: never above the max
    assert worst.converged is True and worst.rho == rho
    assert worst.grad_evals == 3 * 20  # the random start and ±ρ·v_max, 20 steps each

    average = m["average_case"]
    exact = 0.5 * sigma**2 * float(GAPPED.sum())
    low, high = average.ci95
    assert low <= exact <= high, (average.value, average.ci95, exact)
    assert average.stderr > 0 and average.samples == 64 and average.sigma == sigma

    ratio = m["noise_consistency"]
    assert abs(ratio.value - 1) <= 2 * ratio.stderr, (ratio.value, ratio.stderr)
    assert ratio.ci95[0] <= 1 <= ratio.ci95[1], ratio.ci95
    # computed from the two measures it needs, which are reported too
    assert set(m) == {"lambda_max", "trace_per_param", "grad_norm", "worst_case", "average_case",
                      "noise_consistency"}
    predicted = sigma**2 / 2 * m["trace_per_param"].value * 20
    assert ratio.value == pytest.approx(average.value / predicted, rel=1e-12)


#: λ_max = 100 at the head of a cluster 100, 99.2, ..., 92.8 above 40 eigenvalues in [0.1, 1]:
#: from a random start, 20 steps of Auto-PGD reach 0.1229 of ½ρ²λ_max = 0.125 (1.7% below);
#: from ±ρ·v_max the ascent starts at the maximum.
CLUSTERED = torch.cat([100 - 0.8 * torch.arange(10.0), torch.linspace(0.1, 1.0, 40)]).double()


def test_worst_case_on_a_clustered_quadratic_is_the_closed_form_at_the_default_options():
    engine = quadratic_engine(symmetric_with_spectrum(CLUSTERED, seed=3), star(50, seed=4))
    m = sharpness(engine, SharpnessOptions(measures=("worst_case",))).measures
    worst, rho = m["worst_case"], SharpnessOptions.rho
    expected = 0.5 * rho**2 * 100
    assert worst.value == pytest.approx(expected, rel=1e-3), (worst.value, expected)
    assert worst.value <= expected * (1 + 1e-12)  # a point of the ball: never above the max
    assert worst.converged is True and worst.steps == 20
    # the warm start made the difference: the random start alone stays 1.7% below
    assert worst.random_start_value < expected * (1 - 1e-2), worst.random_start_value
    assert worst.warm_start_value == pytest.approx(expected, rel=1e-5)
    # ρ‖∇L‖ + ½ρ²λ_max with ∇L = 0 at the minimum, from the two measures reported beside it
    assert m["grad_norm"].value == 0.0
    assert worst.second_order_estimate == pytest.approx(0.5 * rho**2 * m["lambda_max"].value,
                                                        rel=1e-12)
    assert worst.second_order_estimate == pytest.approx(expected, rel=1e-6)


def test_ascent_converged_says_the_best_rose_by_at_most_0_1_percent_over_the_last_interval():
    """f(u) = ½uᵀAu on the ball ‖u‖ ≤ 0.05, A with the clustered spectrum: 20 steps from a random
    start are still rising (false), from the top eigenvector nothing is left to gain (true);
    each verdict is checked against the best values recorded at Auto-PGD's checkpoints."""
    matrix = symmetric_with_spectrum(CLUSTERED, seed=3)
    like = torch.zeros(50, dtype=torch.float64)
    top = torch.linalg.eigh(matrix).eigenvectors[:, -1]

    def run(**start):
        values = []

        def f(u):
            values.append(float(0.5 * u @ matrix @ u))
            return values[-1], matrix @ u

        found = ascend(f, Ball(0.05), 50, steps=20, like=like, **start)
        marks = checkpoints(20)
        best_at = [max(values[:mark]) for mark in marks]
        assert found.value == best_at[-1] and len(values) == found.grad_evals == 20
        assert found.converged == (best_at[-1] - best_at[-2] <= 1e-3 * best_at[-1])
        return found

    rising = run(generator=torch.Generator().manual_seed(0))
    assert rising.converged is False and rising.value < 0.1215
    settled = run(start=0.05 * top)
    assert settled.converged is True and settled.value == pytest.approx(0.125, rel=1e-12)


def test_quadratic_eps_sharpness_is_the_corner_of_the_box():
    """Diagonal A > 0 at θ* ≠ 0: the maximum of ½Σ a_i δ_i² over |δ_i| ≤ ε(|θ*_i|+1) is the corner."""
    a = torch.linspace(0.5, 3.0, 12).double()
    theta = star(12, seed=5)
    engine = quadratic_engine(torch.diag(a), theta)
    for eps in (1e-3, 0.02):
        m = sharpness(engine, SharpnessOptions(measures=("eps_sharpness",), epsilon=eps)).measures
        loss_at_star = 0.0
        corner = 0.5 * float((a * eps**2 * (theta.abs() + 1) ** 2).sum())
        expected = 100 * corner / (1 + loss_at_star)
        got = m["eps_sharpness"]
        assert got.value == pytest.approx(expected, rel=1e-4), (eps, got.value, expected)
        assert got.epsilon == eps and got.converged is True


def test_quadratic_pac_bayes_sigma_is_the_closed_form():
    """E[L(θ*+N(0,σ²I))] = ½σ²·tr A = d at σ = √(2d/tr A). With 200 eigenvalues in [0.5, 1.5] the
    estimate of tr A from m = 128 antithetic pairs (samples=256) has relative std
    √(2Σλ²)/tr A/√m ≈ √(2·217)/200/√128 ≈ 0.92%, so σ ∝ (tr A)^(-1/2) has ≈ 0.46%: 1% is
    more than 2 standard errors (the bisection's own tolerance is 0.1%)."""
    lam = torch.linspace(0.5, 1.5, 200).double()
    engine = quadratic_engine(symmetric_with_spectrum(lam, seed=1), star(200, seed=2))
    d = 0.1
    m = sharpness(engine, SharpnessOptions(measures=("pac_bayes_sigma",), samples=256,
                                           pac_bayes_deviation=d)).measures["pac_bayes_sigma"]
    expected = math.sqrt(2 * d / float(lam.sum()))
    assert m.value == pytest.approx(expected, rel=0.01), (m.value, expected)
    assert m.flatness == pytest.approx(1 / m.value**2, rel=1e-12)
    assert 0 < m.tolerance <= SharpnessOptions.pac_bayes_rtol * m.value and m.samples == 256
    assert m.deviation == d and m.target == "loss"


def test_pac_bayes_search_starts_from_the_trace_and_spends_few_full_estimates(monkeypatch):
    """Issue 32 §3: with the suite's trace, the searches start where the quadratic model reaches
    d (σ₀ = √(2d/tr A)), bracket σ on the first quarter of the pairs, and then need about three
    estimates on all of them (one near the crossing, one either side), where the search on all
    pairs from --sigma alone took six. The closed form holds all the same."""
    from landscape_cli.engine.passes import Passes

    lam = torch.linspace(0.5, 1.5, 200).double()
    engine = quadratic_engine(symmetric_with_spectrum(lam, seed=1), star(200, seed=2))
    rows, evaluate_many = [], Passes.evaluate_many
    monkeypatch.setattr(Passes, "evaluate_many",
                        lambda self, thetas, *a, **k: rows.append(len(thetas)) or evaluate_many(
                            self, thetas, *a, **k))
    d, samples = 0.1, 256
    options = SharpnessOptions(measures=("trace_per_param", "pac_bayes_sigma"), samples=samples,
                               pac_bayes_deviation=d)
    m = sharpness(engine, options).measures["pac_bayes_sigma"]
    assert m.value == pytest.approx(math.sqrt(2 * d / float(lam.sum())), rel=0.01)
    full = [r for r in rows if r == samples]
    assert 2 <= len(full) <= 6  # both searches: about three on all pairs each
    assert all(r == samples // 4 for r in rows if r != samples)  # the pilots: a quarter
    assert sum(rows) <= 9 * samples  # 2 searches × 6 estimates on all pairs cost 12


def test_noise_consistency_alone_reports_what_it_is_computed_from(tmp_path, cli):
    eigenvalues = [4.0, 2.0, 1.0, 0.5]
    config = write_quadratic_config(tmp_path, eigenvalues, gradient_scale=0.0)
    ckpt = save_quadratic_checkpoint(tmp_path, eigenvalues, gradient_scale=0.0)
    code, doc, result = cli("sharpness", ckpt, "-c", config, "--measures", "noise_consistency",
                            "--samples", "16", "--json")
    assert code == 0, result.output
    measures = doc["results"]["measures"]
    assert set(measures) == {"trace_per_param", "average_case", "noise_consistency"}
    assert measures["trace_per_param"]["value"] == pytest.approx(sum(eigenvalues) / 4, rel=1e-8)
    assert measures["average_case"]["stderr"] > 0
    assert measures["noise_consistency"]["value"] == pytest.approx(
        measures["average_case"]["value"] / (0.01**2 / 2 * sum(eigenvalues)), rel=1e-8)


# ----------------------------------------------------------------------------- scale invariance


def trained_relu_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """64 → 16 → ReLU → 10 on 200 digits, 300 full-batch Adam steps (seeded, float64)."""
    torch.manual_seed(0)
    x, y = digits(200)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    fit(model, x, y)
    return model, x, y


def mlp_engine(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> HVPEngine:
    problem = build_problem(model, criterion_loss(nn.CrossEntropyLoss()), Batches([(x, y)], [len(y)]),
                            device=CPU, dtype=torch.float64)
    return HVPEngine(problem)


def test_scale_invariant_measures_survive_a_reparametrisation_that_lambda_max_does_not():
    model, x, y = trained_relu_mlp()
    c = 10.0
    scaled = copy.deepcopy(model)
    with torch.no_grad():  # ReLU(c·z) = c·ReLU(z): the same function
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    with torch.no_grad():
        assert float((model(x) - scaled(x)).abs().max()) < 1e-9
    engines = [mlp_engine(model, x, y), mlp_engine(scaled, x, y)]
    losses = [e.loss() for e in engines]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-6)
    assert losses[0] < 1.0  # trained

    invariant = tuple(name for name, d in MEASURES.items() if d.scale_invariant)
    assert invariant, "some measure is flagged scale-invariant"
    options = SharpnessOptions(measures=(*invariant, "lambda_max"), samples=32, steps=20)
    before, after = (sharpness(e, options).measures for e in engines)
    for name in invariant:
        a, b = before[name], after[name]
        assert a.scale_invariant and b.scale_invariant
        assert a.value is not None and b.value is not None, name
        if a.stderr is not None:
            error = min(a.stderr, b.stderr)
            assert abs(a.value - b.value) < error, (name, a.value, b.value, error)
        else:
            assert abs(a.value - b.value) <= 1e-6 * abs(a.value), (name, a.value, b.value)
    lam = before["lambda_max"].value, after["lambda_max"].value
    assert not before["lambda_max"].scale_invariant
    assert max(lam[0] / lam[1], lam[1] / lam[0]) > 10, lam


# ----------------------------------------------------------------------------- sample MLP


def test_lambda_max_equals_spectrum_top_1():
    shared = {"config": MLP_CONFIG, "set": SMALL, "dtype": "float64"}
    measured = landscape_cli.analyze("sharpness", MLP_CKPT, measures="lambda_max", **shared)
    top = landscape_cli.analyze("spectrum", MLP_CKPT, top=1, **shared)
    measures = measured.results["measures"]
    assert set(measures) == {"lambda_max"}
    lam, expected = measures["lambda_max"]["value"], top.results["top_eigenvalues"][0]
    assert lam == pytest.approx(expected, rel=1e-6), (lam, expected)
    assert measures["lambda_max"]["converged"] is True


def test_worst_case_ascent_beats_random_points_on_the_sphere():
    problem = loaded("mlp.yaml", MLP_CKPT, *SMALL).problem
    engine = HVPEngine(problem)
    rho = 0.05
    worst = sharpness(engine, SharpnessOptions(measures=("worst_case",), rho=rho)).measures["worst_case"]
    z = torch.randn(64, problem.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    thetas = problem.theta0 + rho * z / z.norm(dim=1, keepdim=True)
    base = engine.passes.evaluate().loss
    random_best = max(e.loss for e in engine.passes.evaluate_many(thetas)) - base
    assert worst.value >= random_best, (worst.value, random_best)
    assert worst.value > 0


def test_worst_case_on_the_sample_cnn_is_at_least_each_kind_of_start():
    """The value is the best of the random-start ascent and of the ascents from ±ρ·v_max; the
    warm start's gain is checked against L(θ ± ρv) − L(θ) for a v_max found independently
    (Lanczos from another seed to a tighter tolerance)."""
    problem = loaded("cnn_bn.yaml", CNN_CKPT, "data.max_samples=128").problem
    engine = HVPEngine(problem)
    rho = 0.05
    m = sharpness(engine, SharpnessOptions(measures=("worst_case",), rho=rho, steps=8)).measures
    worst = m["worst_case"]
    assert worst.value >= worst.random_start_value and worst.value >= worst.warm_start_value
    assert worst.value > 0 and worst.grad_evals == 3 * 8
    independent = lanczos(engine, top=1, tol=1e-8,
                          generator=torch.Generator().manual_seed(7))
    assert independent.top.values[0] == pytest.approx(m["lambda_max"].value, rel=1e-4)
    v = independent.top.vectors[0].to(problem.theta0)
    base = engine.passes.evaluate().loss
    at_warm = max(engine.passes.evaluate(problem.theta0 + s * rho * v).loss - base for s in (1, -1))
    assert worst.warm_start_value == pytest.approx(at_warm, rel=1e-4), (worst.warm_start_value, at_warm)
    assert worst.value >= at_warm * (1 - 1e-4)
    assert worst.second_order_estimate == pytest.approx(
        rho * m["grad_norm"].value + 0.5 * rho**2 * m["lambda_max"].value, rel=1e-12)


# ----------------------------------------------------------------------------- determinism, CLI


def test_same_seed_same_numbers_and_another_seed_changes_monte_carlo():
    shared = {"config": MLP_CONFIG, "set": ["data.max_samples=200"], "dtype": "float64",
              "measures": "worst_case,average_case,pac_bayes_sigma", "samples": 8, "steps": 5}
    first = landscape_cli.analyze("sharpness", MLP_CKPT, **shared)
    second = landscape_cli.analyze("sharpness", MLP_CKPT, **shared)
    assert first.results == second.results
    other = landscape_cli.analyze("sharpness", MLP_CKPT, seed=1, **shared)
    a, b = first.results["measures"], other.results["measures"]
    assert a["average_case"]["value"] != b["average_case"]["value"]
    assert a["average_case"]["sigma"] == b["average_case"]["sigma"]


@pytest.fixture
def world(tmp_path):
    return {"dir": tmp_path, "config": write_config(tmp_path / "landscape.yaml")}


def _sharpness(world, *args) -> list:
    return ["sharpness", MLP, "-c", world["config"], "--json", *args]


@pytest.mark.parametrize("flags, needle", [
    (["--rho", "0"], "--rho"),
    (["--sigma", "-1"], "--sigma"),
    (["--epsilon", "0"], "--epsilon"),
    (["--measures", "nosuch"], "--measures"),
    (["--measures", "worst_case,nosuch"], "nosuch"),
    (["--steps", "0"], "--steps"),
    (["--samples", "1"], "--samples"),
], ids=["rho", "sigma", "epsilon", "measure", "one-unknown-measure", "steps", "samples"])
def test_bad_input_is_one_line_naming_the_option(world, flags, needle):
    names = listing(world["dir"])
    ran = invoke(_sharpness(world, *flags), cwd=world["dir"])
    assert_one_error(ran, [needle], folder=world["dir"], before=names)


def test_gates_use_the_measure_names(world):
    args = ("--measures", "worst_case,eps_sharpness", "--steps", "5")
    failed = invoke(_sharpness(world, *args, "--fail-if", "worst_case>0"), cwd=world["dir"])
    assert failed.returncode == 1, failed.detail()
    passed = invoke(_sharpness(world, *args, "--fail-if", "eps_sharpness>1e9"), cwd=world["dir"])
    assert passed.returncode == 0, passed.detail()


# ----------------------------------------------------------------------------- interruptions, cost


def test_an_interrupted_run_reports_the_measures_it_finished(monkeypatch):
    """SIGINT/SIGTERM (``Interrupted``, as the signal handler raises it) inside the third
    measure's first product: the report holds the two finished measures, status interrupted."""
    from landscape_cli import runner
    from landscape_cli.errors import Interrupted
    from landscape_cli.options import RunOptions

    current = []

    @contextlib.contextmanager
    def progress(label, total):
        yield lambda done, note="": current.append(note)

    hvp = HVPEngine.hvp

    def interrupting(self, vectors):
        if current[-1] == "trace_per_param":
            raise Interrupted(15, "SIGTERM")
        return hvp(self, vectors)

    monkeypatch.setattr(HVPEngine, "hvp", interrupting)
    prepared = runner.prepare("sharpness", MLP_CKPT, RunOptions.of(
        {"config": MLP_CONFIG, "set": SMALL}), {"measures": "lambda_max,trace_per_param,"
                                                "grad_norm,average_case", "samples": 8})
    report, interrupted = runner.execute(prepared, progress=progress)
    doc = report.to_dict()
    assert interrupted is not None and interrupted.exit_code == 143
    assert doc["status"] == "interrupted"
    assert list(doc["results"]["measures"]) == ["lambda_max"]
    assert doc["results"]["measures"]["lambda_max"]["value"] > 0
    assert ("interrupted: 1 measure(s) finished; not computed: trace_per_param, grad_norm, "
            "average_case") in doc["warnings"]


def test_the_cost_estimate_is_told_once_from_the_first_timed_product_and_changes_no_number():
    """A fake clock that advances 1 s per reading: the base pass and the first product take
    1 s each, so the plan of 50 + 50 HVPs and 64 data passes reads ≈ 3 min."""
    engine = quadratic_engine(symmetric_with_spectrum(CLUSTERED, seed=3), star(50, seed=4))
    options = SharpnessOptions(measures=("lambda_max", "trace_per_param", "average_case"))
    notes = []
    estimate = CostEstimate("sharpness", notes.append, "fewer, please", clock=itertools.count().__next__)
    told = sharpness(engine, options, estimate=estimate)
    assert notes == ["sharpness: about 100 HVPs and 64 data passes ≈ 3 min at 1 s per product and "
                     "1 s per pass (measured); average_case dominates; fewer, please"]
    assert told == sharpness(engine, options)  # the timing only prints
    quick = []
    sharpness(engine, SharpnessOptions(measures=("grad_norm",)), estimate=CostEstimate(
        "sharpness", quick.append, "", clock=itertools.count().__next__))
    assert quick == []  # 3 passes of 1 s: under the 30 s worth telling


@pytest.mark.slow
def test_sigterm_mid_run_writes_the_finished_measures(tmp_path):
    """A real process: grad_norm finishes at once, then a 100,000-step ascent runs. Once the
    estimate is on stderr, SIGTERM: exit 143 and ``-o`` holds the whole interrupted report."""
    out = tmp_path / "r.json"
    proc = start_process(
        ["sharpness", str(MLP_CKPT), "-c", str(MLP_CONFIG),
         "--set", "data.max_samples=100", "--measures", "grad_norm,worst_case_adaptive",
         "--steps", "100000", "-o", str(out), "--json"],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = proc.stderr.readline()
        assert first.startswith("note: sharpness: about 300004 data passes"), first
        assert "worst_case_adaptive dominates" in first
        time.sleep(2)  # grad_norm, one gradient of 100 samples, is done long before
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, rest
    assert rest.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM"), rest
    doc = json.loads(out.read_text())
    assert doc["status"] == "interrupted"
    assert list(doc["results"]["measures"]) == ["grad_norm"]
    assert any("not computed: worst_case_adaptive" in w for w in doc["warnings"])
