"""Memory planning of the Krylov basis (issue 27 §0): the basis grows with the steps taken, is
bounded by what the operator's memory holds and then restarted (thick restart), stored in float32
where float64 cannot hold a restarted one, and refused in one line where nothing fits."""

from __future__ import annotations

import pytest
import torch
from helpers.quadratic import symmetric_with_spectrum

from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.linalg.memory import (
    BasisLayout,
    NoMemory,
    basis_peak,
    lanczos_bytes,
    plan_lanczos,
    restart_minimum,
)
from landscape_cli.linalg.operator import CallableOperator, DenseOperator

#: 280 eigenvalues: a bulk of both signs and well separated outliers at both ends
SPECTRUM = torch.cat([torch.linspace(-3, -0.1, 20), torch.linspace(0.01, 1, 250),
                      torch.tensor([2.0, 3, 5, 8, 13, 21, 34, 55, 89, 144])])
N = len(SPECTRUM)


@pytest.fixture(scope="module")
def matrix():
    return symmetric_with_spectrum(SPECTRUM, seed=0)


def run(operator, top=3, bottom=2, tol=1e-8, **options):
    return lanczos(operator, top=top, bottom=bottom, tol=tol,
                   generator=torch.Generator().manual_seed(0), **options)


def assert_honest(result, exact):
    """Each reported value is within its residual of an exact eigenvalue (Parlett §13.2), up to
    eigvalsh's own rounding of the constructed matrix (~1e-15·‖A‖)."""
    for pairs in (result.top, result.bottom):
        for value, residual in zip(pairs.values, pairs.residuals):
            assert float((exact - value).abs().min()) <= residual + 1e-14 * 144


def test_growth_peak_counts_the_copy():
    """Rows 1, 2, 4, 8, then 12: while the 8 are copied into the 12, both are held."""
    assert [basis_peak(m) for m in (1, 2, 3, 8, 12, 16, 17)] == [1, 3, 5, 12, 20, 24, 33]


def test_restarted_lanczos_with_a_basis_far_below_the_steps_matches_eigvalsh(matrix):
    """A budget that holds 14 basis vectors (the fewest for 3 + 2 pairs): top-3 and bottom-2
    equal eigvalsh to 1e-10 after several times as many steps as vectors, with residuals that
    bound the true errors, as the unbounded run's do."""
    exact = torch.linalg.eigvalsh(matrix)
    rows = restart_minimum(5)
    assert rows == 14
    bounded = run(DenseOperator(matrix, memory=lanczos_bytes(N, rows, 5, restarted=True)))
    assert bounded.layout == BasisLayout(torch.float64, False, rows, restarted=True)
    assert bounded.basis_rows == rows and bounded.converged
    whole = run(DenseOperator(matrix))
    assert whole.layout == BasisLayout(max_vectors=N) and whole.steps < bounded.steps
    assert bounded.steps > 3 * bounded.basis_rows
    for result in (bounded, whole):
        assert result.top.values == pytest.approx(exact[-3:].flip(0).tolist(), rel=1e-10)
        assert result.bottom.values == pytest.approx(exact[:2].tolist(), rel=1e-10, abs=1e-10)
        assert_honest(result, exact)


@pytest.mark.parametrize(("top", "bottom", "tol"), [(4, 0, 1e-8), (0, 3, 1e-6)])
def test_restarted_lanczos_one_end(matrix, top, bottom, tol):
    """The bottom of this spectrum is a cluster (spacing 0.15 under ‖A‖ = 144): slower."""
    exact = torch.linalg.eigvalsh(matrix)
    rows = restart_minimum(top + bottom)
    result = run(DenseOperator(matrix, memory=lanczos_bytes(N, rows, top + bottom, restarted=True)),
                 top=top, bottom=bottom, tol=tol)
    assert result.layout.restarted and result.layout.max_vectors == rows and result.converged
    assert result.steps > rows
    assert result.top.values == pytest.approx(exact[N - top:].flip(0).tolist(), rel=1e-10)
    assert result.bottom.values == pytest.approx(exact[:bottom].tolist(), rel=1e-7)
    assert_honest(result, exact)


def test_float32_storage_keeps_the_accuracy_of_float64_storage(matrix):
    """Stored in float32, multiplied in float64, at tol 1e-5: about the same steps, values within
    1e-8 of the float64-stored run's (both are within 1e-5·‖A‖ of converged), residuals (which
    now carry the storage's rounding, ~1e-7·‖A‖) still bound the true errors; restarted the
    same."""
    exact = torch.linalg.eigvalsh(matrix)
    stored64 = run(DenseOperator(matrix), tol=1e-5)
    for layout in (BasisLayout(torch.float32, False, N), BasisLayout(torch.float32, False, 20, True)):
        stored32 = run(DenseOperator(matrix), tol=1e-5, layout=layout)
        assert stored32.converged and stored32.steps <= stored64.steps + 3
        assert stored32.top.values == pytest.approx(stored64.top.values, rel=1e-8)
        assert stored32.bottom.values == pytest.approx(stored64.bottom.values, rel=1e-5)
        assert max(stored32.top.residuals) < 1e-5 * 144
        assert_honest(stored32, exact)


def test_the_chooser_takes_float32_only_where_float64_cannot_hold_a_restarted_basis():
    """n = 10⁷ (a float64 vector: 80 MB; float32 is read through a 64 MiB float64 slice)."""
    n, cpu = 10**7, torch.device("cpu")
    least = restart_minimum(1)  # 6 vectors for one pair
    f64 = lanczos_bytes(n, least, 1, restarted=True)
    assert plan_lanczos(n, 500, 1, 1e-4, None, cpu) == BasisLayout(max_vectors=500)
    assert plan_lanczos(n, 500, 1, 1e-4, lanczos_bytes(n, 500, 1), cpu) == BasisLayout(max_vectors=500)
    assert plan_lanczos(n, 500, 1, 1e-4, f64, cpu) == BasisLayout(max_vectors=least, restarted=True)
    f32 = plan_lanczos(n, 500, 1, 1e-4, f64 - 1, cpu)
    assert f32.storage == torch.float32 and f32.restarted and f32.max_vectors >= least
    with pytest.raises(NoMemory):  # float32 is refused where its rounding would reach tol
        plan_lanczos(n, 500, 1, 1e-9, f64 - 1, cpu)
    # on a GPU, the host holds the basis (500 + 256 rows while growing: 60 GB) when the device
    # holds only the working vectors and the slice the basis is read through
    host = plan_lanczos(n, 500, 1, 1e-4, lanczos_bytes(n, 500, 1, on_host=True),
                        torch.device("cuda"), host=756 * n * 8)
    assert host == BasisLayout(torch.float64, on_host=True, max_vectors=500)
    # 0 (--memory-budget 0): the fewest vectors, never refused
    assert plan_lanczos(n, 500, 1, 1e-4, 0, cpu) == BasisLayout(max_vectors=least, restarted=True)


def test_no_row_is_allocated_before_a_step_needs_it():
    """n = 300,000 (a whole basis of n rows: 720 GB): the rows double as the steps come, so
    after s steps at most 2s rows exist (today's code preallocated 32)."""
    n = 300_000
    diagonal = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    diagonal[:2] = torch.tensor([5.0, 3.0])
    result = run(CallableOperator(lambda v: v * diagonal, n), top=1, bottom=0, tol=1e-3)
    assert result.converged and result.steps < 16
    assert result.basis_rows < 2 * result.steps and result.basis_rows < 32


def test_nothing_fits_refuses_before_any_product_in_one_line():
    """124M parameters, 16 GiB: a restarted basis of 14 float32 vectors and, at the end, 3
    float64 vectors per pair (20.4 GiB) do not fit for top 5, before a product is asked for
    (the operator would fail); the line says what would fit (top 3: 14.3 GiB)."""
    def never(block):
        raise AssertionError("a product was asked for")

    n = 124_000_000
    with pytest.raises(NoMemory) as refused:
        run(CallableOperator(never, n, memory=16 << 30), top=5, bottom=0)
    line = str(refused.value)
    assert "\n" not in line and "124,000,000 parameters" in line
    assert "needs at least 20.39 GiB" in line
    assert "--memory-budget by" in line and "--top 3 (fewer pairs)" in line
    assert "--hvp-strategy stream or fd (no kept graph)" in line and "--shard-model" not in line
