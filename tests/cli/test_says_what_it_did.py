"""The tool says what it did (issue 17.5): which state dict ``auto`` took and how to pick the
other, a loss computed below the analysis dtype, errors against the flag that caused them,
parameters counted as the analyses count them, and only commands that exist advertised."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.adversarial import FAST, assert_one_error, write_config
from helpers.runners import invoke
from helpers.samples import MLP_CKPT as MLP
from torch import nn


@pytest.fixture
def two_state_dicts(tmp_path):
    """One file with a model and an EMA copy that differ (the EMA's weights are 3× larger)."""
    sd = torch.load(MLP, weights_only=True)
    path = tmp_path / "two.pt"
    torch.save({"model": sd, "ema": {k: 3 * v for k, v in sd.items()}}, path)
    return path, write_config(tmp_path / "c.yaml")


def _run(*args) -> dict:
    ran = invoke([*args, "--json"])
    assert ran.returncode == 0, ran.detail()
    return json.loads(ran.stdout)


def test_auto_key_says_which_it_took_and_key_picks_the_other(two_state_dicts):
    path, config = two_state_dicts
    auto = _run("spectrum", path, "-c", config, *FAST)
    assert auto["checkpoint"]["key"] == "model"
    assert any("'model'" in w and "'ema'" in w and "--key" in w for w in auto["warnings"])
    for command in ("spectrum", "trace", "classify-critical-point"):
        ema = _run(command, path, "-c", config, *FAST[2:], "--key", "ema",
                   *(["--top", "1"] if command == "spectrum" else []),
                   *(["--max-hvps", "30"] if command == "trace" else []))
        assert ema["checkpoint"]["key"] == "ema", command
        assert not any("--key" in w for w in ema["warnings"])
    assert ema["results"]["loss"] != auto["results"]["loss"]


@pytest.mark.parametrize("args, needles", [
    (["--device", "mps"], ["--device mps", "not a device"]),
    (["--dtype", "float16"], ["--dtype float16", "float32"]),
    (["--seed", "-3"], ["--seed -3", "greater than or equal to 0"]),
    (["--set", "data.batch_size=0"], ["--set data.batch_size=0", "greater than 0"]),
    (["--memory-budget", "lots"], ["--memory-budget lots"]),
])
def test_an_error_from_a_flag_names_the_flag_not_the_file(tmp_path, args, needles):
    config = write_config(tmp_path / "c.yaml")
    line = assert_one_error(invoke(["spectrum", MLP, "-c", config, *args]), needles)
    assert "c.yaml" not in line


def test_a_loss_below_the_analysis_dtype_is_named(tmp_path):
    """``--dtype float64`` on a loss that casts to float32 (as transformers do with logits)."""
    (tmp_path / "losses.py").write_text(
        "import torch.nn.functional as F\n"
        "def f32(model, batch):\n"
        "    x, y = batch\n"
        "    return F.cross_entropy(model(x).float(), y)\n")
    config = write_config(tmp_path / "c.yaml", extra=f"loss:\n  fn: {tmp_path}/losses.py:f32\n")
    doc = _run("spectrum", MLP, "-c", config, *FAST, "--dtype", "float64")
    assert any("loss comes out in float32" in w and "float64" in w for w in doc["warnings"])
    plain = _run("spectrum", MLP, "-c", config, *FAST)  # float32 throughout: nothing to say
    assert not any("loss comes out" in w for w in plain["warnings"])


def test_inspect_counts_parameters_apart_from_buffers_and_tied_copies(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 4), nn.BatchNorm1d(4), nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight  # tied, as an LM head and its embedding
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    doc = _run("inspect", tmp_path / "tied.pt")
    results = doc["results"]
    assert results["n_params"] == 40 + 4 + 4 == sum(p.numel() for p in model.parameters())
    assert results["n_buffers"] == 4 + 4 + 1
    roles = {t["name"]: t["role"] for t in results["tensors"]}
    assert roles["2.weight"] == "tied to 0.weight" and roles["1.running_var"] == "buffer"
    assert doc["checkpoint"]["n_params"] == results["n_params"]


def test_help_advertises_only_commands_that_exist():
    from landscape_cli.cli.app import app

    existing = {c.name for c in app.registered_commands}
    # each phrase the help or the package summary may use, and the command that makes it true
    # (the phrase was once matched against command names, so "mode connectivity" passed only
    # where the terminal's width happened to wrap it)
    promises = {"sharpness": "sharpness", "interpolate": "interpolate",
                "mode connectivity": "interpolate", "batch": "batch"}
    words = " ".join(invoke(["--help"]).stdout.lower().split())
    from importlib.metadata import metadata

    summary = metadata("landscape-cli")["Summary"].lower()
    for phrase, command in promises.items():
        if command not in existing:
            assert phrase not in words and phrase not in summary, phrase
