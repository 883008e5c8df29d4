"""Stochastic Lanczos quadrature (``linalg/slq.py``) and ``landscape spectrum --density``.

Operators are quadratics with a chosen spectrum (A = Q diag(λ) Qᵀ), so every number has an
exact answer: eigenvalues, tr(Aᵏ)/n, the fraction of negative eigenvalues, Σ_{λ<0}|λ|/Σ|λ|.
"""

from __future__ import annotations

import math
import struct
import sys

import pytest
import torch
from helpers.quadratic import save_quadratic_checkpoint, symmetric_with_spectrum, write_quadratic_config

from landscape_cli.analyses.density import spectral_density
from landscape_cli.linalg.lanczos import tridiagonal_eigh
from landscape_cli.linalg.memory import NoMemory, slq_bytes
from landscape_cli.linalg.operator import CallableOperator
from landscape_cli.linalg.slq import (
    gaussian_density,
    negative_mass,
    negative_weight_ratio,
    rademacher,
    slq,
)

# n = 400, a quarter negative and spread well below the resolution 3·20/90 ≈ 0.67; the
# positive part reaches down to 0, like the near-zero bulk of a trained network.
QUARTER_NEGATIVE = torch.cat([torch.linspace(-10.0, -2.0, 100), torch.linspace(0.0, 10.0, 300)]).double()


@pytest.fixture(scope="module")
def quarter():
    return symmetric_with_spectrum(QUARTER_NEGATIVE, seed=1)


def matvec_of(matrix, calls=None, memory=None):
    def matvec(block):
        if calls is not None:
            calls.append(tuple(block.shape))
        return block @ matrix  # rows are vectors; A is symmetric

    return CallableOperator(matvec, matrix.shape[0], matrix.dtype, memory=memory)


def run_slq(matrix, runs, steps, seed=0, calls=None):
    return slq(matvec_of(matrix, calls), runs=runs, steps=steps,
               generator=torch.Generator().manual_seed(seed))


def reference_lanczos(matrix, v, steps):
    """One plain Lanczos run with full reorthogonalization: the quadrature from start v."""
    basis, alphas, betas = [v], [], []
    q, previous, beta = v, torch.zeros_like(v), 0.0
    for _ in range(steps):
        w = matrix @ q
        alpha = float(q @ w)
        w = w - alpha * q - beta * previous
        Q = torch.stack(basis)
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        betas.append(beta)
        previous, q = q, w / beta
        basis.append(q)
    values, vectors = tridiagonal_eigh(alphas, betas)
    return values, vectors[0] ** 2


# ----------------------------------------------------------------------------- the algorithm


def test_negative_mass_of_a_quarter_negative_spectrum(quarter):
    calls = []
    result = run_slq(quarter, runs=10, steps=90, calls=calls)
    threshold = 3 * (QUARTER_NEGATIVE.max() - QUARTER_NEGATIVE.min()) / 90
    assert negative_mass(result.nodes, result.weights, float(threshold)) == pytest.approx(0.25, abs=0.08)
    # all runs advance together: one block product per step, one row per run
    assert calls == [(10, 400)] * 90
    assert result.nodes.shape == result.weights.shape == (10, 90) and result.lengths == [90] * 10


def test_weights_sum_to_one_and_density_integrates_to_one(quarter):
    density = spectral_density(matvec_of(quarter), runs=6, steps=50, seed=3)
    for weights in density.weights:
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        assert min(weights) >= 0
    grid, values = torch.tensor(density.grid), torch.tensor(density.values)
    assert float(torch.trapezoid(values, grid)) == pytest.approx(1.0, abs=1e-3)
    assert len(density.grid) == 1000 and density.sigma == pytest.approx(
        (density.lambda_max - density.lambda_min) / 50)
    # a narrow σ chosen by hand: the grid is refined so the curve still integrates to 1
    narrow = spectral_density(matvec_of(quarter), runs=2, steps=50, seed=3, sigma=0.005)
    assert len(narrow.grid) > 1000
    assert float(torch.trapezoid(torch.tensor(narrow.values), torch.tensor(narrow.grid))) == \
        pytest.approx(1.0, abs=1e-3)


def test_gaussian_density_is_the_broadened_quadrature():
    nodes = torch.tensor([[-1.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.3], dtype=torch.float64)
    sigma = 0.7

    def normal(mean):
        return math.exp(-0.5 * ((0.3 - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    expected = 0.5 * (0.25 * normal(-1) + 0.75 * normal(2) + normal(0.5))
    assert float(gaussian_density(nodes, weights, t, sigma)[0]) == pytest.approx(expected, rel=1e-12)


def test_moments_match_exact_traces(quarter):
    n, runs, steps = 400, 30, 20
    result = run_slq(quarter, runs=runs, steps=steps, seed=7)
    starts = rademacher(runs, n, torch.Generator().manual_seed(7))
    for k in (1, 2):
        power = torch.linalg.matrix_power(quarter, k)
        per_run = (result.weights * result.nodes ** k).sum(dim=1)
        # Gauss quadrature with m nodes is exact for degree < 2m: each run gives vᵀAᵏv exactly
        exact_per_run = torch.einsum("rn,nm,rm->r", starts, power, starts)
        assert torch.allclose(per_run, exact_per_run, rtol=1e-10, atol=1e-10)
        # and the mean over runs estimates tr(Aᵏ)/n: Var(zᵀBz) = 2(‖B‖²_F − Σ B_ii²) for Rademacher z
        stderr = math.sqrt(2 * (float((power ** 2).sum()) - float((power.diagonal() ** 2).sum()))) / n
        stderr /= math.sqrt(runs)
        assert abs(float(per_run.mean()) - float(power.trace()) / n) < 4 * stderr


def test_steps_beyond_n_give_the_exact_eigenvalues_and_projections():
    n = 30
    eigenvalues = torch.linspace(-3.0, 5.0, n).double() ** 3
    matrix = symmetric_with_spectrum(eigenvalues, seed=4)
    result = run_slq(matrix, runs=1, steps=50, seed=2)
    assert result.lengths == [n]
    assert torch.allclose(result.nodes[0], torch.sort(eigenvalues).values, rtol=0, atol=1e-9 * 125)
    _, vectors = torch.linalg.eigh(matrix)
    start = rademacher(1, n, torch.Generator().manual_seed(2))[0]
    assert torch.allclose(result.weights[0], (vectors.T @ start) ** 2, atol=1e-10)


def test_breakdown_stops_a_run_with_a_complete_quadrature():
    distinct = torch.tensor([-2.0, 0.5, 1.0, 3.0, 7.0], dtype=torch.float64)
    matrix = symmetric_with_spectrum(distinct.repeat(12), seed=5)  # n = 60, 5 distinct values
    result = run_slq(matrix, runs=3, steps=20)
    assert result.lengths == [5, 5, 5]
    assert result.nodes.shape == (3, 5)
    assert torch.allclose(result.nodes, distinct.expand(3, 5), atol=1e-9)
    assert torch.allclose(result.weights.sum(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    # a fifth of the spectrum is −2 and the quadrature sees it: each weight estimates 1/5
    assert negative_mass(result.nodes, result.weights, 1.0) == pytest.approx(0.2, abs=0.08)


def test_uneven_breakdown_pads_with_zero_weight(monkeypatch):
    """A run whose start vector sees fewer eigenvalues stops earlier than the others."""
    import landscape_cli.linalg.slq as module

    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    starts = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    monkeypatch.setattr(module, "rademacher",
                        lambda runs, n, generator: starts / starts.norm(dim=1, keepdim=True))
    calls = []
    result = slq(matvec_of(matrix, calls), runs=2, steps=4)
    assert calls == [(2, 4), (2, 4), (1, 4), (1, 4)]  # the stopped run costs no more products
    assert result.lengths == [4, 2]
    assert result.weights[1, 2:].tolist() == [0.0, 0.0]
    nodes, weights = result.per_run()
    assert nodes[1] == pytest.approx([1.0, 2.0]) and weights[1] == pytest.approx([0.5, 0.5])
    assert nodes[0] == pytest.approx([1.0, 2.0, 3.0, 4.0]) and weights[0] == pytest.approx([0.25] * 4)


def test_batched_runs_equal_single_runs():
    """Outliers above a bulk, as in trained networks: their Ritz values converge within a few
    steps, after which Lanczos without full reorthogonalization grows spurious copies."""
    eigenvalues = torch.cat([torch.linspace(0.0, 1.0, 297).double(),
                             torch.tensor([50.0, 80.0, 120.0], dtype=torch.float64)])
    matrix = symmetric_with_spectrum(eigenvalues, seed=6)
    runs, steps = 4, 60
    result = run_slq(matrix, runs=runs, steps=steps, seed=11)
    starts = rademacher(runs, 300, torch.Generator().manual_seed(11))
    for r in range(runs):
        values, weights = reference_lanczos(matrix, starts[r], steps)
        assert torch.allclose(result.nodes[r], values, rtol=0, atol=1e-9)
        assert torch.allclose(result.weights[r], weights, rtol=0, atol=1e-9)


def test_without_reorthogonalization_the_quadrature_keeps_its_moments():
    """Three vectors per run instead of the basis: orthogonality is lost once the outliers
    converge (their nodes repeat), but vᵀAᵏv and the spectral functionals stay right."""
    eigenvalues = torch.cat([torch.linspace(-1.0, 1.0, 297).double(),
                             torch.tensor([50.0, 80.0, 120.0], dtype=torch.float64)])
    matrix = symmetric_with_spectrum(eigenvalues, seed=6)
    runs, steps = 4, 60
    full = run_slq(matrix, runs=runs, steps=steps, seed=11)
    local = slq(matvec_of(matrix), runs=runs, steps=steps,
                generator=torch.Generator().manual_seed(11), reorthogonalize=False)
    starts = rademacher(runs, 300, torch.Generator().manual_seed(11))
    for k in (1, 2, 3, 4):
        exact = torch.einsum("rn,nm,rm->r", starts, torch.linalg.matrix_power(matrix, k), starts)
        per_run = (local.weights * local.nodes ** k).sum(dim=1)
        assert torch.allclose(per_run, exact, rtol=1e-8)
    # lost orthogonality shows: the largest outlier appears more than once among the nodes
    assert int((local.nodes[0] - 120.0).abs().lt(1e-6).sum()) > 1
    assert int((full.nodes[0] - 120.0).abs().lt(1e-6).sum()) == 1
    for functional in (lambda r: negative_mass(r.nodes, r.weights, 0.1),
                       lambda r: negative_weight_ratio(r.nodes, r.weights)):
        assert functional(local) == pytest.approx(functional(full), abs=0.01)


def test_density_beyond_the_memory_budget_drops_reorthogonalization(quarter):
    """The declared bytes: 3 runs × (the basis grown by doubling to 20 rows, which peaks at
    20 + 16 rows while it copies, and 5 working vectors) × 400 numbers × 8 bytes; without
    reorthogonalization 3 × (3 + 5) vectors; below that, nothing fits."""
    basis_bytes = 3 * (20 + 16 + 5) * 400 * 8
    assert slq_bytes(400, 3, 20, 8, reorthogonalize=True) == basis_bytes
    kept = spectral_density(matvec_of(quarter, memory=basis_bytes), runs=3, steps=20)
    dropped = spectral_density(matvec_of(quarter, memory=basis_bytes - 1), runs=3, steps=20)
    assert kept.reorthogonalized and not kept.notes
    assert not dropped.reorthogonalized and "without full reorthogonalization" in dropped.notes[0]
    assert dropped.negative_mass == pytest.approx(kept.negative_mass, abs=0.02)
    with pytest.raises(NoMemory, match=r"SLQ with 3 runs of 400 parameters .* fewer --runs"):
        spectral_density(matvec_of(quarter, memory=3 * 8 * 400 * 8 - 1), runs=3, steps=20)


def test_negative_weight_ratio_matches_exact(quarter):
    result = run_slq(quarter, runs=10, steps=90)
    exact = float(QUARTER_NEGATIVE[QUARTER_NEGATIVE < 0].abs().sum() / QUARTER_NEGATIVE.abs().sum())
    assert negative_weight_ratio(result.nodes, result.weights) == pytest.approx(exact, abs=0.03)


def test_float32_operator_keeps_the_quadrature():
    """In float32 (the default dtype of checkpoints) the reorthogonalized runs still match."""
    matrix = symmetric_with_spectrum(QUARTER_NEGATIVE[::4], seed=2)  # n = 100
    exact = run_slq(matrix, runs=3, steps=30, seed=5)
    single = slq(matvec_of(matrix.float()), runs=3, steps=30,
                 generator=torch.Generator().manual_seed(5))
    assert torch.allclose(single.nodes, exact.nodes, atol=1e-3)
    assert torch.allclose(single.weights, exact.weights, atol=1e-3)


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def quarter_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quarter")
    return (save_quadratic_checkpoint(folder, QUARTER_NEGATIVE.tolist(), seed=1),
            write_quadratic_config(folder, QUARTER_NEGATIVE.tolist(), seed=1))


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    eigenvalues = [-1.0, -0.5, 0.2, 0.4, 1.0, 2.0, 3.0, 4.0]
    return save_quadratic_checkpoint(folder, eigenvalues), write_quadratic_config(folder, eigenvalues)


def test_cli_density_json(cli, quarter_files):
    ckpt, config = quarter_files
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "1", "--density", "--json",
                       "--fail-if", "negative_mass>0.5")
    assert code == 0
    results = doc["results"]
    density = results["density"]
    for key in ("grid", "values", "nodes", "weights", "negative_mass", "negative_threshold",
                "negative_weight_ratio", "sigma", "runs", "steps"):
        assert key in density
    assert density["negative_mass"] == pytest.approx(0.25, abs=0.08)
    assert density["runs"] == 10 and density["steps"] == 90 and density["reorthogonalized"]
    assert len(density["nodes"]) == len(density["weights"]) == 10
    assert all(len(row) == 90 and sum(w) == pytest.approx(1.0) for row, w in
               zip(density["nodes"], density["weights"]))
    assert density["negative_threshold"] == pytest.approx(
        3 * (density["lambda_max"] - density["lambda_min"]) / 90)
    assert density["lambda_min"] == pytest.approx(-10.0, abs=1e-6)
    assert density["lambda_max"] == pytest.approx(10.0, abs=1e-6)
    assert results["top_eigenvalues"][0] == pytest.approx(10.0, rel=1e-6)  # Lanczos ran as before
    assert doc["gates"][0]["value"] == density["negative_mass"]
    lanczos = results["lanczos_steps"] + 1  # + one product's rounding
    # SLQ: 10 × 90 HVPs in 90 blocks, one per step
    assert (doc["cost"]["hvps"], doc["cost"]["hvp_blocks"]) == (lanczos + 900, lanczos + 90)


def test_cli_gates_see_the_density_scalars(cli, small_files):
    ckpt, config = small_files
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "1", "--density", "--json",
                       "--runs", "4", "--fail-if", "negative_weight_ratio>0.05")
    exact = 1.5 / 12.1  # Σ_{λ<0}|λ| / Σ|λ|; each run's weights are its start vector's projections
    assert doc["results"]["density"]["negative_weight_ratio"] == pytest.approx(exact, abs=0.08)
    assert code == 1 and doc["gates"][0]["violated"]


def test_cli_memory_budget_zero_runs_slq_without_the_basis(cli, quarter_files):
    ckpt, config = quarter_files
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "1", "--density", "--json",
                       "--memory-budget", "0")
    assert code == 0
    density = doc["results"]["density"]
    assert not density["reorthogonalized"] and density["negative_mass"] == pytest.approx(0.25, abs=0.08)
    assert any("without full reorthogonalization" in w and "10 × 90" in w for w in doc["warnings"])
    code, doc, _ = cli("classify-critical-point", ckpt, "-c", config, "--json", "--memory-budget", "0")
    assert code == 0 and any("without full reorthogonalization" in w for w in doc["warnings"])


def test_cli_table_shows_the_chart(cli, small_files):
    ckpt, config = small_files
    code, _, result = cli("spectrum", ckpt, "-c", config, "--top", "1", "--density", "-f", "table",
                          "--runs", "3", "--steps", "8")
    assert code == 0
    assert "eigenvalue density" in result.stdout and "negative_mass" in result.stdout
    assert "3 runs × 8 steps" in result.stdout
    assert result.stdout.count("█") > 20 and "▓" in result.stdout  # bars; the negative part marked
    code, _, plain = cli("spectrum", ckpt, "-c", config, "--top", "1", "-f", "table")
    assert code == 0 and "eigenvalue density" not in plain.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--steps", "1"), "--steps 1"),
    (("--runs", "0"), "--runs 0"),
    (("--sigma", "0"), "--sigma 0"),
    (("--plot", "density.txt"), ".png, .svg or .pdf"),
])
def test_cli_bad_density_options_exit_2(cli, small_files, args, message):
    ckpt, config = small_files
    code, doc, result = cli("spectrum", ckpt, "-c", config, "--density", *args, "--json")
    assert code == 2 and doc is None
    assert message in result.stderr


def test_cli_plot_without_matplotlib_says_how_to_install(cli, small_files, tmp_path, monkeypatch):
    ckpt, config = small_files
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    code, _, result = cli("spectrum", ckpt, "-c", config, "--plot", tmp_path / "d.png", "--json")
    assert code == 2
    assert "pip install 'landscape-cli[plot]'" in result.stderr
    assert not (tmp_path / "d.png").exists()


def test_cli_plot_writes_a_png(cli, small_files, tmp_path):
    pytest.importorskip("matplotlib")
    ckpt, config = small_files
    out = tmp_path / "plots" / "density.png"
    out.parent.mkdir()  # --plot, like -o, creates no folders
    code, doc, _ = cli("spectrum", ckpt, "-c", config, "--top", "1", "--runs", "3", "--steps", "8",
                       "--plot", out, "--json")
    assert code == 0 and "density" in doc["results"]  # --plot implies --density
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 200 and height > 200
    assert [p.name for p in out.parent.iterdir()] == ["density.png"]  # no temporary file left
