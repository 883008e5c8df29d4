"""``batch --log`` (issue 30 §2): each checkpoint's numbers at its step, read back with each
tracker's own reader."""

from __future__ import annotations

import json

import pytest
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT
from helpers.trackers import wandb_history

import landscape_cli.integrations.loggers as loggers

SWEEP = ("--command", "sharpness", "--measures", "lambda_max,grad_norm", "--set", "data.max_samples=200",
         "-c", CONFIGS / "mlp.yaml", "-q")


@pytest.fixture
def sweep(tmp_path):
    """Two checkpoints whose names give their steps (30, then 7 by metadata would reorder)."""
    for name in ("ck_step30.pt", "ck_step10.pt"):
        (tmp_path / name).write_bytes(MLP_CKPT.read_bytes())

    def run(*log) -> list[dict]:
        out = tmp_path / "out.jsonl"
        ran = invoke(["batch", tmp_path / "*.pt", *SWEEP, "-o", out, "--no-resume", *log])
        assert ran.returncode == 0, ran.detail()
        return sorted((json.loads(line) for line in out.read_text().splitlines()),
                      key=lambda line: line["checkpoint"]["path"].endswith("30.pt"))

    return run


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path, sweep):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = sweep("--log", f"tensorboard:{tmp_path / 'tb'}")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    found = [(e.step, e.value) for e in events.Scalars("landscape/lambda_max")]
    assert found == [(10, pytest.approx(lines[0]["results"]["measures"]["lambda_max"]["value"])),
                     (30, pytest.approx(lines[1]["results"]["measures"]["lambda_max"]["value"]))]
    assert "landscape/loss" in events.Tags()["scalars"]


def test_an_mlflow_store_reads_back_with_its_client(tmp_path, sweep):
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow 3 refuses a file store unless told
    lines = sweep("--log", f"mlflow:{uri}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "landscape/grad_norm")
    assert [(m.step, m.value) for m in history] == [
        (10, pytest.approx(lines[0]["results"]["measures"]["grad_norm"]["value"])),
        (30, pytest.approx(lines[1]["results"]["measures"]["grad_norm"]["value"]))]


def test_a_wandb_offline_run_holds_the_history(tmp_path, sweep, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    lines = sweep("--log", "wandb:landscape-test")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = wandb_history(runs[0])
    logged = [(h["_step"], h["landscape/lambda_max"]) for h in history if "landscape/lambda_max" in h]
    assert logged == [(10, pytest.approx(lines[0]["results"]["measures"]["lambda_max"]["value"])),
                      (30, pytest.approx(lines[1]["results"]["measures"]["lambda_max"]["value"]))]


def test_a_tracker_not_installed_or_misspelt_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    assert_one_error(invoke(["batch", MLP_CKPT, *SWEEP, "--log", "mlflow:file:///x"]),
                     ["--log mlflow:file:///x", "mlflow is not installed", "landscape-cli[mlflow]"])
    monkeypatch.undo()
    assert_one_error(invoke(["batch", MLP_CKPT, *SWEEP, "--log", "neptune:x"]),
                     ["--log neptune:x", "tensorboard:DIR"])
