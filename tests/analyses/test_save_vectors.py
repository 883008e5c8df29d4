"""``spectrum --save-vectors`` (issue 26, defect 4a): the Ritz vectors written as one tensor per
vector and parameter, each an eigenvector of the exact Hessian to within its reported residual
(checked through an independent float64 HVP, ``torch.autograd.functional.hvp`` on the dense
loss), loadable by ``safetensors.torch.load_file`` and by ``interpolate --load-directions``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.exact import full_batch_loss
from helpers.quadratic import symmetric_with_spectrum
from helpers.samples import CONFIGS, MLP_CKPT, digits, loaded
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import landscape_cli
from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.linalg.operator import DenseOperator

SAMPLES = 400
SMALL = f"data.max_samples={SAMPLES}"
MLP_CONFIG = CONFIGS / "mlp.yaml"


@pytest.fixture(scope="module")
def exact():
    """The MLP's problem (parameter names, shapes and order, θ₀) and its float64 dense loss."""
    problem = loaded("mlp.yaml", MLP_CKPT, SMALL).problem
    x, y = digits(SAMPLES)
    return problem, full_batch_loss(problem.objective.model, problem, x, y)


def _float32_deviation(problem, v: torch.Tensor) -> float:
    """‖H₃₂v − H₆₄v‖: what one float32 product of the dense loss is off by (issue 26, defect 5:
    a float32 residual is measured against float32 products, not the exact Hessian)."""
    x, y = digits(SAMPLES)
    loss32 = full_batch_loss(problem.objective.model, problem, x.float(), y)
    hv32 = torch.autograd.functional.hvp(loss32, problem.theta0.float(), v.float())[1]
    loss64 = full_batch_loss(problem.objective.model, problem, x, y)
    return float((hv32.double() - _hvp(loss64, problem.theta0, v)).norm())


def test_lanczos_returns_the_eigenvectors_of_the_reported_values():
    """Rows in the order of ``values``, unit norm, ±the exact eigenvectors of a chosen spectrum."""
    eigenvalues = [-3.0, -1.0, *[0.01 * i for i in range(40)], 2.0, 5.0]
    A = symmetric_with_spectrum(eigenvalues, seed=1)
    exact_values, exact_vectors = torch.linalg.eigh(A)
    found = lanczos(DenseOperator(A), top=2, bottom=2, tol=1e-12,
                    generator=torch.Generator().manual_seed(0))
    for pairs, columns in ((found.top, [-1, -2]), (found.bottom, [0, 1])):
        assert pairs.vectors.shape == (2, len(eigenvalues))
        for value, residual, vector, column in zip(pairs.values, pairs.residuals, pairs.vectors,
                                                   columns):
            assert abs(value - float(exact_values[column])) < 1e-12
            assert abs(float(vector.norm()) - 1) < 1e-14
            assert abs(abs(float(vector @ exact_vectors[:, column])) - 1) < 1e-12
            assert float((A @ vector - value * vector).norm()) <= residual + 1e-14


def _flat(tensors: dict[str, torch.Tensor], prefix: str, names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[f"{prefix}/{name}"].reshape(-1) for name in names])


def _hvp(loss, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.hvp(loss, theta.double(), v.double())[1]


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [("float64", "1e-9"), ("float32", "1e-4")])
def test_saved_vectors_are_eigenvectors_within_their_residuals(cli, tmp_path, exact, dtype, tol):
    """float64: residuals of 1e-16 (top) to 1e-10 (bottom); float32: 1e-7 (top) to 1e-5, which
    bound the float64 Hessian's quotients once a float32 product's own error is added."""
    problem, loss = exact
    out = tmp_path / "out.safetensors"
    code, doc, result = cli("spectrum", MLP_CKPT, "--set", SMALL, "--dtype", dtype, "--top", "3",
                            "--bottom", "1", "--tol", tol, "--save-vectors", out, "--json")
    assert code == 0, result.stderr
    results = doc["results"]
    assert results["saved_vectors"] == str(out) and doc["warnings"] == []
    tensors = load_file(out)
    shapes = dict(problem.objective.model.named_parameters())
    names = [f"{end}_{rank}" for end, count in (("top", 3), ("bottom", 1))
             for rank in range(1, count + 1)]
    assert set(tensors) == {f"{v}/{p}" for v in names for p in shapes} | {"origin", "u", "v"}
    assert all(tensors[f"{v}/{p}"].shape == shapes[p].shape for v in names for p in shapes)
    with safe_open(out, framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["vectors"]) == names
    theta = problem.theta0
    for name in names:
        about = json.loads(metadata[name])
        end, rank = name.split("_")
        assert about["end"] == end and about["rank"] == int(rank)
        index = int(rank) - 1
        assert about["eigenvalue"] == results[f"{end}_eigenvalues"][index]
        assert about["residual"] == results[f"{end}_residuals"][index]
        assert about["converged"] is True
        v = _flat(tensors, name, problem.names)
        assert v.dtype == torch.float64 and abs(float(v.norm()) - 1) < 1e-12
        hv = _hvp(loss, theta, v)
        # |vᵀHv − θ| = |vᵀ(Hv − θv)| ≤ ‖Hv − θv‖ ≤ the reported residual (unit v), plus the
        # float64 HVP's own rounding, and in float32 what a float32 product is off by
        slack = 1e-12 * abs(results["top_eigenvalues"][0])
        if dtype == "float32":
            slack += _float32_deviation(problem, v)
        assert abs(float(v @ hv) - about["eigenvalue"]) <= about["residual"] + slack
        assert float((hv - about["eigenvalue"] * v).norm()) <= about["residual"] + slack


def test_interpolate_draws_the_plane_of_the_top_two_vectors(cli, tmp_path, exact):
    problem, loss = exact
    vectors, plane_file = tmp_path / "vectors.safetensors", tmp_path / "plane.safetensors"
    code, _, result = cli("spectrum", MLP_CKPT, "--set", SMALL, "--dtype", "float64", "--top", "2",
                          "--save-vectors", vectors, "--json")
    assert code == 0, result.stderr
    code, doc, result = cli("interpolate", MLP_CKPT, "--set", SMALL, "--dtype", "float64",
                            "--plane", "--grid", "-1:1:3", "--load-directions", vectors,
                            "--save-directions", plane_file, "--json")
    assert code == 0, result.stderr
    saved, drawn = load_file(vectors), load_file(plane_file)
    assert torch.equal(drawn["u"], _flat(saved, "top_1", problem.names))
    assert torch.equal(drawn["v"], _flat(saved, "top_2", problem.names))
    plane = doc["results"]["plane"]
    assert plane["directions"] == "hessian"
    # the grid's node (x, y) = (1, -1) is θ₀ + u − v: its loss through the dense loss
    u, v = drawn["u"], drawn["v"]
    expected = float(loss(problem.theta0.double() + u - v))
    assert math.isclose(plane["loss"][0][2], expected, rel_tol=1e-12)


def test_same_seed_same_bytes(cli, tmp_path):
    files = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for file in files:
        code, _, result = cli("spectrum", MLP_CKPT, "--set", "data.max_samples=200", "--top", "2",
                              "--bottom", "1", "--max-hvps", "20", "--save-vectors", file,
                              "--json")
        assert code == 0, result.stderr
    assert files[0].read_bytes() == files[1].read_bytes()


def test_params_writes_the_analysed_parameters_and_says_so(cli, tmp_path):
    out = tmp_path / "out.safetensors"
    code, doc, result = cli("spectrum", MLP_CKPT, "--set", "data.max_samples=200", "--top", "1",
                            "--params", "2.*", "--save-vectors", out, "--json")
    assert code == 0, result.stderr
    assert set(load_file(out)) == {"top_1/2.weight", "top_1/2.bias"}
    warnings = " ".join(doc["warnings"])
    assert "only the 330 analysed parameters (--params) are written, of the model's 2410" in warnings
    assert "one top vector, so the file is no plane" in warnings
    code, doc, result = cli("interpolate", MLP_CKPT, "--plane", "--load-directions", out)
    assert code == 2 and "\n" not in result.stderr.strip()
    assert result.stderr.startswith(f"error: --load-directions {out}: is not a directions file")


def test_python_api(tmp_path):
    out = tmp_path / "x.safetensors"
    report = landscape_cli.analyze("spectrum", MLP_CKPT, config=MLP_CONFIG, set=[SMALL], top=2,
                                   save_vectors=str(out))
    assert report.results["saved_vectors"] == str(out)
    assert report.settings["options"]["save_vectors"] == str(out)
    with safe_open(out, framework="pt") as handle:
        top_2 = json.loads(handle.metadata()["top_2"])
    assert top_2["eigenvalue"] == report.results["top_eigenvalues"][1]


def _safetensors_checkpoint(tmp_path):
    path = tmp_path / "mlp.safetensors"
    save_file(torch.load(MLP_CKPT, weights_only=True), path)
    return path


@pytest.mark.parametrize("case, message", [
    ("no-suffix", "the file name must end in .safetensors (got no suffix)"),
    ("pt", "the file name must end in .safetensors (got .pt)"),
    ("folder", "is a folder; give a file name"),
    ("missing-folder", "does not exist"),
    ("under-a-file", "is not a folder"),
    ("the-checkpoint", "is an input of this run"),
])
def test_bad_destination_one_line_exit_2_nothing_written(cli, tmp_path, case, message):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "dir.safetensors").mkdir()
    checkpoint = tmp_path / "missing.pt"  # refused before loading: the checkpoint is never read
    target = {"no-suffix": tmp_path / "vectors", "pt": tmp_path / "vectors.pt",
              "folder": tmp_path / "dir.safetensors",
              "missing-folder": tmp_path / "nowhere" / "v.safetensors",
              "under-a-file": tmp_path / "a.txt" / "v.safetensors"}.get(case)
    if case == "the-checkpoint":
        checkpoint = target = _safetensors_checkpoint(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, doc, result = cli("spectrum", checkpoint, "-c", MLP_CONFIG, "--save-vectors", target)
    assert code == 2 and doc is None
    line = result.stderr.strip()
    assert line == line.splitlines()[0] and line.startswith(f"error: --save-vectors {target}: ")
    assert message in line
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_batch_refuses_one_vectors_file_for_many_checkpoints(cli, tmp_path):
    out = tmp_path / "v.safetensors"
    code, doc, result = cli("batch", MLP_CKPT, MLP_CKPT.with_name("seed1_epoch100.pt"),
                            "--command", "spectrum", "--save-vectors", out)
    assert code == 2 and doc is None and not out.exists()
    assert result.stderr.strip() == ("error: --save-vectors: a sweep would write every "
                                     "checkpoint's vectors to one file; run spectrum "
                                     "--save-vectors on each checkpoint")
