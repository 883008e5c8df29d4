"""``interpolate --plane --directions pca`` (issue 31 §2): a run's PCA plane through its last
checkpoint, against constructed trajectories; and through the CLI on the sample MLP's run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, ROOT

from landscape_cli.analyses.directions import pca_plane

RUN = [ROOT / "sample_checkpoints" / "mlp" / f"seed0_epoch{e}.pt" for e in ("001", "010", "100")]


def basis(n: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, 3, generator=generator, dtype=torch.float64))
    return q.T  # three orthonormal rows: the plane's u, v, and a direction off it


def test_a_trajectory_in_a_plane_is_explained_whole_and_lies_on_it():
    u, v, _ = basis()
    final = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = [(3.0, 1.0), (2.0, -1.5), (1.0, 0.5), (0.4, -0.2)]
    thetas = [final + a * u + b * v for a, b in steps] + [final]
    found = pca_plane(thetas, [f"c{i}" for i in range(5)])
    assert sum(found.explained_variance) == pytest.approx(1, abs=1e-12)
    assert max(found.off_plane.values()) < 1e-12
    # the coordinates are the steps' in an orthonormal basis of the same plane: distances kept
    points = torch.tensor([found.coordinates[f"c{i}"] for i in range(4)])
    steps_ = torch.tensor(steps)
    assert torch.allclose(torch.cdist(points, points), torch.cdist(steps_, steps_), atol=1e-10)
    assert found.coordinates["c4"] == (0.0, 0.0)


def test_noise_orthogonal_to_the_plane_is_the_reported_distance_off_it():
    u, v, w = basis(seed=2)
    final = torch.zeros(50, dtype=torch.float64)
    # Σ cᵢaᵢ = 0: the noise leaves the top two directions where they were
    steps, noise = [(2.0, 0.0), (0.0, 2.0), (-2.0, 0.0), (0.0, -2.0)], [0.3, -0.2, 0.3, -0.2]
    thetas = [final + a * u + b * v + c * w for (a, b), c in zip(steps, noise)] + [final]
    found = pca_plane(thetas, [f"c{i}" for i in range(5)])
    assert [found.off_plane[f"c{i}"] for i in range(4)] == pytest.approx([abs(c) for c in noise], rel=1e-10)
    total = sum(a * a + b * b + c * c for (a, b), c in zip(steps, noise))
    assert sum(found.explained_variance) == pytest.approx(1 - sum(c * c for c in noise) / total, rel=1e-10)


def test_the_cli_reports_the_trajectory_and_the_plot_draws_it(tmp_path):
    small = ["-c", CONFIGS / "mlp.yaml", "--set", "data.max_samples=200"]
    ran = invoke(["interpolate", *RUN, *small, "--plane", "--directions", "pca", "--grid", "-25:5:4",
                  "--json"])
    assert ran.returncode == 0, ran.detail()
    plane = json.loads(ran.stdout)["results"]["plane"]
    assert plane["directions"] == "pca" and len(plane["trajectory"]) == 3
    assert plane["trajectory"][-1] == [0.0, 0.0] and sum(plane["explained_variance"]) == pytest.approx(1)
    assert max(plane["off_plane"].values()) < 1e-4  # three points always lie in a plane
    assert len(plane["loss"]) == 4 and len(plane["loss"][0]) == 4

    pytest.importorskip("matplotlib", reason="the plot needs matplotlib")
    from landscape_cli.report.plot import interpolate_figure

    figure = interpolate_figure({"command": "interpolate", "results": json.loads(ran.stdout)["results"]})
    lines = [line for axes in figure.axes for line in axes.get_lines() if line.get_label() == "trajectory"]
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [c[0] for c in plane["trajectory"]]


def test_pca_needs_a_plane_through_three_or_more():
    small = ["-c", CONFIGS / "mlp.yaml"]
    assert_one_error(invoke(["interpolate", *RUN[:2], *small, "--plane", "--directions", "pca"]),
                     ["--directions pca", "three or more"])
