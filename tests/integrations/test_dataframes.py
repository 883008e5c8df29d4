"""``landscape_cli.read_reports`` (issue 30 §4): batch lines, single reports and interrupted ones
into one DataFrame, and back to the same numbers."""

from __future__ import annotations

import json
import math

import pytest

pandas = pytest.importorskip("pandas", reason="pandas is not installed (pip install landscape-cli[pandas])")

from helpers.runners import invoke  # noqa: E402
from helpers.samples import CONFIGS, MLP_CKPT  # noqa: E402

import landscape_cli  # noqa: E402

MEASURES = ("--measures", "lambda_max,average_case", "--samples", "8", "--set", "data.max_samples=200")


def test_a_round_trip_from_reports_to_a_frame_and_back(tmp_path):
    config = CONFIGS / "mlp.yaml"
    for name in ("a_step10.pt", "b_step20.pt"):
        (tmp_path / name).write_bytes(MLP_CKPT.read_bytes())
    assert invoke(["batch", tmp_path / "*.pt", "--command", "sharpness", *MEASURES, "-c", config,
                   "-o", tmp_path / "a_sweep.jsonl", "-q"]).returncode == 0
    single = invoke(["spectrum", MLP_CKPT, "-c", config, "--top", "2", "--json",
                     "--set", "data.max_samples=200"])
    (tmp_path / "single.json").write_text(single.stdout)
    stopped = json.loads((tmp_path / "a_sweep.jsonl").read_text().splitlines()[0])
    stopped.update(status="interrupted", checkpoint={**stopped["checkpoint"], "global_step": 5})
    del stopped["results"]["measures"]["average_case"]
    (tmp_path / "b_stopped.jsonl").write_text(json.dumps(stopped) + "\n" + json.dumps(
        {"command": "sharpness", "status": "error", "error": "x: bad", "checkpoint": {"path": "x"}}) + "\n")

    frame = landscape_cli.read_reports([tmp_path / "*.jsonl", tmp_path / "single.json"])
    assert len(frame) == 5
    assert list(frame["status"]) == ["ok", "ok", "interrupted", "error", "ok"]
    assert list(frame["step"][:3]) == [10, 20, 5]
    docs = [json.loads(line) for f in ("a_sweep.jsonl", "b_stopped.jsonl")
            for line in (tmp_path / f).read_text().splitlines()] + [json.loads(single.stdout)]
    for record, doc in zip(frame.to_dict("records"), docs):  # and back
        for name, measure in (doc.get("results") or {}).get("measures", {}).items():
            assert record[name] == measure["value"]
            if "stderr" in measure:
                assert record[f"{name}.stderr"] == measure["stderr"]
                assert [record[f"{name}.ci95.0"], record[f"{name}.ci95.1"]] == measure["ci95"]
        results = doc.get("results") or {}
        if "top_eigenvalues" in results:
            assert [record["top_eigenvalues.0"], record["top_eigenvalues.1"]] == results["top_eigenvalues"]
        if "loss" in results:
            assert record["loss"] == results["loss"]
    interrupted = frame.to_dict("records")[2]
    assert isinstance(interrupted["average_case"], float) and math.isnan(interrupted["average_case"])


def test_a_pattern_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(landscape_cli.runner.LandscapeError, match="no report matches"):
        landscape_cli.read_reports(tmp_path / "*.jsonl")
