"""Streaming data (issue 22.3): ``data.stream: true`` reads the batches again from the loader on
every pass, with the numbers of the data held in memory; a loader that gives other batches on
another pass is refused; data past the host budget streams by itself."""

from __future__ import annotations

import pytest
from helpers.adversarial import assert_one_error
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT
from helpers.samples import MLP_CKPT as MLP

import landscape_cli
from landscape_cli.config import load_config
from landscape_cli.loading.data import BatchStream, load_batches

SMALL = ["data.max_samples=300", "data.batch_size=64"]


@pytest.mark.parametrize("command, options, key", [
    ("spectrum", {"top": 3, "bottom": 1}, ("top_eigenvalues", "bottom_eigenvalues")),
    ("trace", {"max_hvps": 30}, ("trace",)),
    ("sharpness", {"measures": "grad_norm,average_case", "samples": 8}, ("measures",)),
])
def test_streamed_data_gives_the_numbers_of_held_data(command, options, key):
    common = {"config": CONFIGS / "mlp.yaml", "dtype": "float64", **options}
    held = landscape_cli.analyze(command, MLP_CKPT, set=SMALL, **common)
    streamed = landscape_cli.analyze(command, MLP_CKPT, set=[*SMALL, "data.stream=true"], **common)
    assert streamed.settings.get("data_streamed") is True and "data_streamed" not in held.settings
    assert streamed.results["loss"] == pytest.approx(held.results["loss"], rel=1e-12, abs=0)
    for name in key:
        assert _flat(streamed.results[name]) == pytest.approx(_flat(held.results[name]), rel=1e-12, abs=1e-14)


def _flat(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [value] if isinstance(value, float) else []


SHUFFLED = '''
import numpy as np, torch
from torch.utils.data import DataLoader, TensorDataset


def make(path):
    d = np.load(path)
    x, y = torch.from_numpy(d["x"][:300]), torch.from_numpy(d["y"][:300])
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
'''


def test_a_loader_that_shuffles_is_refused_on_the_second_pass(tmp_path):
    factory = tmp_path / "shuffled.py"
    factory.write_text(SHUFFLED)
    digits = CONFIGS.parent / "sample_checkpoints" / "data" / "digits.npz"
    ran = invoke(["spectrum", MLP, "-c", CONFIGS / "mlp.yaml", "--set", "data.path=null",
                  "--set", f"data.factory={factory}:make", "--set", f"data.kwargs={{path: {digits}}}",
                  "--set", "data.stream=true", "--top", "1"])
    assert_one_error(ran, ["data.stream", "differs", "same batches on every pass"])


def test_data_past_the_host_budget_streams_by_itself():
    config = load_config(CONFIGS / "mlp.yaml", SMALL)
    held = load_batches(config, host_budget=10 << 20)
    assert not held.streamed and isinstance(held.batches, list)
    streamed = load_batches(config, host_budget=10_000)  # fewer bytes than one batch of digits
    assert streamed.streamed and isinstance(streamed.batches, BatchStream)
    assert streamed.sizes == held.sizes == [64, 64, 64, 64, 44]
    assert all((streamed.batches[i][0] == held.batches[i][0]).all() for i in (3, 0, 4))
    never = load_batches(load_config(CONFIGS / "mlp.yaml", [*SMALL, "data.stream=false"]),
                         host_budget=10_000)
    assert not never.streamed
