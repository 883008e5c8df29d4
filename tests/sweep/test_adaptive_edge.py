"""The adaptive edge of stability, reproduced (issue 29; Cohen et al. 2022, Fig. 1): in a
``landscape batch`` sweep of a full-batch Adam run's checkpoints, the preconditioned sharpness
rises to within 15% of 38/η and stays there, while the plain λ_max stays far below it."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers.adaptive_edge import LR, train
from helpers.runners import invoke


def test_the_preconditioned_sharpness_settles_at_38_over_eta_and_lambda_max_does_not(tmp_path):
    train(tmp_path / "run", steps=500, every=20)
    out, summary = tmp_path / "sweep.jsonl", tmp_path / "trend.md"
    plot = tmp_path / "trend.png"
    drawn = ["--plot", plot] if importlib.util.find_spec("matplotlib") else []  # the [plot] extra
    ran = invoke(["batch", tmp_path / "run" / "*.pt", "--command", "sharpness", "--measures",
                  "stability_ratio,lambda_max", "-o", out, "--summary", summary, "-q", *drawn])
    assert ran.returncode == 0, ran.detail()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["checkpoint"]["step"] for line in lines] == list(range(20, 501, 20))
    measures = [line["results"]["measures"] for line in lines]
    threshold = measures[0]["stability_threshold"]["value"]
    assert threshold == pytest.approx(38 / LR)
    ratios = [m["stability_ratio"]["value"] for m in measures]
    assert ratios[0] < 0.3  # it rises ...
    settled = ratios[int(0.6 * len(ratios)):]
    assert all(0.85 <= r <= 1.15 for r in settled), ratios  # ... to the edge, and stays
    plain = [m["lambda_max"]["value"] / threshold for m in measures]
    assert max(plain) < 0.05, plain  # λ_max knows nothing of Adam's threshold
    assert all(m["stability_ratio"]["converged"] for m in measures)

    first = next(line for line, r in zip(lines, ratios) if r >= 1)
    assert plot.exists() == bool(drawn)
    step = first["checkpoint"]["step"]
    assert f"stability_ratio first reaches 1 (the edge of stability) at step {step}" in summary.read_text()
