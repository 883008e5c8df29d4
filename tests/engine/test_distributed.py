"""The data-parallel engine (issue 22): under torchrun (gloo, CPU) every number equals the
single-process one, with uneven shards and with a rank that holds no batch; a bad input ends
every rank with one line and exit 2; a rank that dies ends the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.distributed_probe import numbers
from helpers.ranks import finish, lose_a_rank, start_ranks
from helpers.samples import CNN_CKPT, CONFIGS, MLP_CKPT, ROOT

PROBE = Path(__file__).resolve().parents[1] / "helpers" / "distributed_probe.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(),
                                reason="torchrun and torch.distributed (gloo) are needed")


def _close(a, b, tol: float = 1e-10) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return abs(a - b) <= tol * max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def cnn_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The sample BN CNN and a perturbed copy (weights and statistics moved)."""
    state = torch.load(CNN_CKPT)
    state = state.get("model_state_dict", state)
    generator = torch.Generator().manual_seed(1)
    other = {k: v + 0.02 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in state.items()}
    path = tmp_path_factory.mktemp("cnn") / "other.pt"
    torch.save(other, path)
    return CNN_CKPT, path


def _torchrun(ranks: int, args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / f"ranks{ranks}.json"
    ran = subprocess.run([str(TORCHRUN), "--nproc-per-node", str(ranks), str(PROBE), *args[:3],
                          str(out), *args[3:]], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    return json.loads(out.read_text())


CASES = {
    # 300 samples in batches of 64: five batches, the last of 44; two ranks hold 3 and 2
    "mlp": (MLP_CKPT, MLP_CKPT.parent / "seed1_epoch100.pt", CONFIGS / "mlp.yaml"),
    "cnn": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_two_ranks_give_the_single_process_numbers(model, cnn_pair, tmp_path):
    first, second, config = CASES[model] or (*cnn_pair, CONFIGS / "cnn_bn.yaml")
    overrides = ["data.max_samples=300", "data.batch_size=64"]
    args = [str(first), str(second), str(config), *overrides]
    together = _torchrun(2, args, tmp_path)
    alone = numbers(str(first), str(second), str(config), overrides)
    assert together.pop("world_size") == 2 and alone.pop("world_size") == 1
    assert _close(together, alone), (together, alone)


@pytest.mark.slow
def test_a_rank_without_batches_adds_nothing_and_does_not_hang(tmp_path):
    """Three ranks over two batches: the third rank's shard is empty."""
    overrides = ["data.max_samples=200", "data.batch_size=128"]
    args = [str(MLP_CKPT), str(MLP_CKPT.parent / "seed1_epoch100.pt"), str(CONFIGS / "mlp.yaml"),
            *overrides]
    together = _torchrun(3, args, tmp_path)
    alone = numbers(*args[:3], overrides)
    assert together.pop("world_size") == 3 and alone.pop("world_size") == 1
    assert _close(together, alone), (together, alone)


def test_a_bad_checkpoint_ends_every_rank_with_one_line(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(MLP_CKPT.read_bytes()[:1000])
    done = finish(start_ranks(["spectrum", str(broken), "-c", str(CONFIGS / "mlp.yaml")]), within=60)
    for code, out, err in done:
        assert code == 2, err
        assert out == "" and "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.pt" in lines[0], err


def test_a_rank_that_dies_ends_the_others(tmp_path):
    """Rank 1 is killed mid-run; rank 0 stops at its next sum with the other ranks (gloo sees
    the closed connection, or --dist-timeout ends the wait), non-zero, one line."""
    code, err, took = lose_a_rank(["sharpness", str(MLP_CKPT), "-c", str(CONFIGS / "mlp.yaml"),
                                   "--measures", "worst_case", "--steps", "100000",
                                   "--dist-timeout", "30", "--json"], settle=8)
    assert took < 45
    assert code not in (0, None), err
    assert "Traceback" not in err and "rank 0 of 2" in err, err
