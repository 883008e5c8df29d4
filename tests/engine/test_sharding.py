"""Models sharded with FSDP2 (issue 28): under torchrun (gloo, CPU, float64), with 2 and 3
ranks, uneven data shares and uneven parameter shards, spectrum top-3, trace and sharpness
λ_max / worst-case of the sample transformer equal the single-process, unsharded numbers within
the finite differences' error (1e-6 relative); what a sharded model cannot run is one line and
exit 2 on every rank; a bad checkpoint and a lost rank end every rank with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.ranks import finish, lose_a_rank, start_ranks
from helpers.runners import invoke
from helpers.samples import CONFIGS, MLP_CKPT, ROOT, TRANSFORMER_CKPT
from helpers.sharded_probe import numbers
from torch import nn

from landscape_cli.engine.sharding import repeated_blocks
from landscape_cli.errors import ConfigError

PROBE = Path(__file__).resolve().parents[1] / "helpers" / "sharded_probe.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(),
                                reason="torchrun and torch.distributed (gloo) are needed")

#: 168 windows in batches of 40: five batches, the last of 8 (2 ranks hold 3 and 2, 3 ranks
#: 2, 2 and 1); the transformer's 52-row and 32-row tensors split unevenly over 3 ranks
UNEVEN = ["data.batch_size=40"]


def _relative(a, b) -> float:
    if isinstance(a, dict):
        return max(_relative(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return max(_relative(x, y) for x, y in zip(a, b))
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def alone() -> dict:
    """The single-process numbers: the whole model, exact products."""
    return numbers(UNEVEN, sharded=False)


@pytest.mark.slow
@pytest.mark.parametrize(("ranks", "blocks"), [(2, []), (3, ["engine.shard_modules=[Block]"])])
def test_sharded_numbers_equal_the_single_process_ones(alone, ranks, blocks, tmp_path):
    out = tmp_path / "sharded.json"
    ran = subprocess.run([str(TORCHRUN), "--nproc-per-node", str(ranks), str(PROBE), str(out),
                          *UNEVEN, *blocks], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1",
                              "PYTHONPATH": str(ROOT / "tests"),
                              # a rank that aborts (a rare gloo abort at exit was seen) prints
                              # where every thread of it was
                              "PYTHONFAULTHANDLER": "1"})
    assert ran.returncode == 0, ran.stderr[-6000:]
    sharded = json.loads(out.read_text())
    assert sharded["settings"] == {"world_size": ranks, "shard": "fsdp", "hvp_strategy": "fd",
                                   "n_analysed": 17172}
    assert alone["settings"]["hvp_strategy"] != "fd" and alone["settings"]["shard"] is None
    for key in ("top", "trace", "sharpness"):
        assert _relative(sharded[key], alone[key]) < 1e-6, (key, sharded[key], alone[key])
    # the process group is gone before the interpreter's finalization, its threads joined: a
    # group left to finalization (kept by DTensor's caches and torch.distributed.nn's defaults)
    # aborted a rank now and then
    for index in range(ranks if sys.platform == "linux" else 0):
        assert json.loads(Path(f"{out}.rank{index}.threads").read_text()) == [], index


def test_repeated_blocks_are_found_or_named():
    """A class of the model's own that repeats is sharded alone (the outermost), torch.nn's
    layers are not; named classes are taken as they are; a name that is not there is one
    line naming the classes there are."""

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer(), Layer()])
            self.head = nn.Linear(2, 1)

    net = Net()
    assert repeated_blocks(net) == list(net.layers)
    assert repeated_blocks(net, ["Linear"]) == [net.layers[0].inner, net.layers[1].inner,
                                                net.layers[2].inner, net.head]
    with pytest.raises(ConfigError, match=r"no module of class Block .*Layer"):
        repeated_blocks(net, ["Block"])


def test_outside_torchrun_is_one_line():
    ran = invoke(["spectrum", str(TRANSFORMER_CKPT), "--shard-model"])
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.strip().splitlines() == [
        "error: --shard-model (engine.shard: fsdp): it shards the model over the ranks of a "
        "torchrun launch; run it under torchrun --nproc-per-node N -m landscape_cli ..."]


@pytest.mark.parametrize(("args", "needle"), [
    (["interpolate", str(TRANSFORMER_CKPT), str(TRANSFORMER_CKPT)], "interpolate does not run"),
    (["spectrum", str(TRANSFORMER_CKPT), "--per-block"], "--per-block do(es) not run"),
    (["trace", str(TRANSFORMER_CKPT), "--per-layer"], "--per-layer do(es) not run"),
    (["sharpness", str(TRANSFORMER_CKPT), "--measures", "average_case"], "average_case do(es)"),
    (["spectrum", str(TRANSFORMER_CKPT), "--hvp-strategy", "cached"], "--hvp-strategy cached"),
    (["spectrum", str(TRANSFORMER_CKPT), "--params", "head.*"], "leave out --params"),
])
def test_what_a_sharded_model_cannot_run_is_one_line_on_every_rank(args, needle):
    done = finish(start_ranks([*args, "--shard-model"]), within=60)
    for code, out, err in done:
        assert code == 2 and out == "" and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --shard-model") and needle in lines[0], err


def test_a_bad_checkpoint_ends_every_sharded_rank_with_one_line(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(TRANSFORMER_CKPT.read_bytes()[:1000])
    done = finish(start_ranks(["spectrum", str(broken), "-c", str(CONFIGS / "char_transformer.yaml"),
                           "--shard-model"]), within=60)
    for code, out, err in done:
        assert code == 2 and out == "" and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.pt" in lines[0], err


@pytest.mark.slow
def test_a_sharded_rank_that_dies_ends_the_others():
    """Rank 1 is killed in the ascent's passes; rank 0 stops at its next collective (FSDP2's
    gathers, or the sums) within --dist-timeout, non-zero, in one line."""
    code, err, took = lose_a_rank(["sharpness", str(TRANSFORMER_CKPT), "--shard-model",
                                   "--measures", "worst_case", "--steps", "100000",
                                   "--dist-timeout", "30", "--json"], settle=10)
    assert took < 45
    assert code not in (0, None), err
    assert "Traceback" not in err and "rank 0 of 2" in err, err[-2000:]


def test_the_mlp_config_is_not_touched_by_sharding_names():
    """``engine.shard`` defaults to none: a plain run's settings say nothing of it."""
    ran = invoke(["spectrum", str(MLP_CKPT), "--top", "1", "--json"])
    assert ran.returncode == 0 and "shard" not in ran.json()["settings"]
