"""Adversarial configs, data files, losses and engine options (issue 16): each exits 2 with one
``error:`` line naming the culprit (the file, the key, the option), no traceback and no
``-o`` file; none hangs and none exits 3.

Most cases run in-process; those that hung before (YAML alias bombs) run in a real process
with a timeout, so that a regression fails instead of stalling the suite.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.adversarial import FAST, assert_one_error, snapshot, write_config
from helpers.runners import invoke, run_process
from helpers.samples import MLP_CKPT as MLP
from pydantic import ValidationError

from landscape_cli.config import MAX_CONFIG_BYTES, MAX_DEPTH, _Section

LOSSES = '''
import torch
from torch import nn


def _mean(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def detached(model, batch):
    return _mean(model, batch).detach()


def constant(model, batch):
    return torch.tensor(1.0)


def under_no_grad(model, batch):
    with torch.no_grad():
        return _mean(model, batch)


def number(model, batch):
    return _mean(model, batch).item()


def nothing(model, batch):
    return None


def per_sample(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")


def integer(model, batch):
    return torch.tensor(3)


def complex_(model, batch):
    return _mean(model, batch).to(torch.complex64)


def triple(model, batch):
    return _mean(model, batch), len(batch[1]), 0


def single(model, batch):
    return (_mean(model, batch),)


def empty(model, batch):
    return ()


def zero_last(model, batch):  # batches of 50, 50, 50, 30 samples: counts 20, 20, 20, 0
    return _mean(model, batch), len(batch[1]) - 30


def negative(model, batch):
    return _mean(model, batch), -len(batch[1])


def nan_count(model, batch):
    return _mean(model, batch), float("nan")


def word_count(model, batch):
    return _mean(model, batch), "many"


def vector_count(model, batch):
    return _mean(model, batch), torch.ones(2)


def raises(model, batch):
    raise RuntimeError("first line\\nsecond line")


def with_count(model, batch):
    return _mean(model, batch), len(batch[1])


def with_float_count(model, batch):
    return _mean(model, batch), torch.tensor(float(len(batch[1])))
'''

DATA = '''
import sys

import torch


def scalars():
    return torch.tensor(1.0), torch.tensor(2)


def uneven():
    return torch.zeros(10, 64), torch.zeros(9, dtype=torch.long)


def leaves():
    sys.exit(3)


def shouts():
    raise ValueError("first line\\nsecond line")
'''


def _bomb(levels: int = 9) -> list[str]:
    """A "billion laughs": ``levels`` lists of 9 aliases of the one before, 9**levels in all."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"&{names[0]} [{', '.join(['lol'] * 9)}]"]
    lines += [f"&{name} [{', '.join([f'*{prev}'] * 9)}]" for prev, name in itertools.pairwise(names)]
    return lines


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Configs, data files and code, in one folder with no landscape.yaml above it."""
    d = tmp_path_factory.mktemp("adversarial_config")
    (d / "losses.py").write_text(LOSSES)
    (d / "datamod.py").write_text(DATA)
    base = write_config(d / "base.yaml").read_text()
    (d / "lone").mkdir()  # no config in it or above it

    def config(name: str, extra: str = "", **kwargs) -> None:
        write_config(d / name, extra=extra, **kwargs)

    def loss(name: str, fn: str) -> None:
        config(name, f"loss:\n  fn: {d / 'losses.py'}:{fn}\n")

    # 1. documents that expand without bound
    config("bomb.yaml", "".join(f"x{i}: {line}\n" for i, line in enumerate(_bomb())))
    config("loop.yaml", "loop: &loop [*loop]\n")
    config("deep.yaml", "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    chain = "c0: &c0 [0]\n" + "".join(f"c{i}: &c{i} [*c{i - 1}]\n" for i in range(1, 100))
    config("alias_deep.yaml", chain)
    config("huge.yaml", "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    # 2. not UTF-8, or no text at all
    (d / "latin1.yaml").write_bytes(base.encode() + "# café\n".encode("latin-1"))
    (d / "utf16.yaml").write_bytes(base.encode("utf-16"))
    (d / "garbage.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "nul.yaml").write_bytes(base.encode() + b"\x00\n")
    (d / "folder.yaml").mkdir()
    (d / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + base.encode())
    config("aliases.yaml", max_samples="&n 200", extra_data="  batch_size: *n\n")
    config("extends_latin1.yaml", f"extends: {d / 'latin1.yaml'}\n")
    (d / "two_docs.yaml").write_text(base + "---\nseed: 1\n")
    (d / "tabs.yaml").write_text(base + "engine:\n\tcompile: true\n")
    (d / "pwn.yaml").write_text(base + f"seed: !!python/object/apply:os.system ['touch {d}/pwned']\n")
    config("newline_key.yaml", '"se\\ned": 1\n')
    # 3. data files that are not two arrays of samples
    np.savez(d / "scalars.npz", x=np.float32(1), y=np.int64(0))
    np.savez(d / "scalar_y.npz", x=np.zeros((10, 64), np.float32), y=np.int64(0))
    np.savez(d / "uneven.npz", x=np.zeros((100, 64), np.float32), y=np.zeros(99, np.int64))
    np.savez(d / "objects.npz", x=np.array([1, "a", None], dtype=object), y=np.zeros(3))
    np.savez(d / "words.npz", x=np.array(["a", "b"]), y=np.zeros(2, np.int64))
    np.savez(d / "no_y.npz", x=np.zeros((10, 64), np.float32), labels=np.zeros(10))
    np.savez(d / "no_x.npz", y=np.zeros(10, np.int64))
    np.savez(d / "float_y.npz", x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.float32))
    np.save(d / "array.npy", np.zeros(3))
    (d / "array.npy").rename(d / "array.npz")
    (d / "text.npz").write_text("not a zip\n")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save(torch.zeros(3), d / "tensor.pt")
    torch.save({"x": [[1.0, 2.0], [3.0]], "y": [0, 1]}, d / "ragged.pt")
    torch.save({"x": torch.tensor(1.0), "y": torch.tensor(0)}, d / "scalars.pt")
    for name in ("scalars.npz", "scalar_y.npz", "uneven.npz", "objects.npz", "words.npz",
                 "no_y.npz", "no_x.npz", "float_y.npz", "array.npz", "text.npz", "list.pt",
                 "tensor.pt", "ragged.pt", "scalars.pt"):
        config(f"data_{name}.yaml", data=d / name)
    config("data_folder.yaml", data=d / "lone")
    for fn in ("scalars", "uneven", "leaves", "shouts"):
        (d / f"factory_{fn}.yaml").write_text(_with_data_factory(base, f"{d / 'datamod.py'}:{fn}"))
    # 4, 5. losses that return what is no loss, or counts that are no count
    for fn in ("detached", "constant", "under_no_grad", "number", "nothing", "per_sample",
               "integer", "complex_", "triple", "single", "empty", "zero_last", "negative",
               "nan_count", "word_count", "vector_count", "raises", "with_count",
               "with_float_count"):
        loss(f"loss_{fn}.yaml", fn)
    config("criterion_none.yaml", "loss:\n  factory: torch.nn:CrossEntropyLoss\n"
                                  "  kwargs: {reduction: none}\n")
    # 7, 9. engine settings in the file
    (d / "device_mps.yaml").write_text(base.replace("device: cpu", "device: mps"))
    config("nan_batch.yaml", extra_data="  batch_size: .nan\n")
    return d


def _with_data_factory(base: str, factory: str) -> str:
    """``base`` with ``data.path`` replaced by ``data.factory``."""
    lines = [f"  factory: {factory}" if line.startswith("  path: ") else line
             for line in base.splitlines()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    """A spectrum run on the sample MLP: its config (a file in the world), extra arguments,
    and what its error line must hold."""

    config: str | None = "base.yaml"
    args: tuple[str, ...] = ()
    needles: tuple[str, ...] = ()
    checkpoint: str | None = None  # a path in the world, instead of the sample MLP
    cwd: str | None = None  # a folder in the world to run in

    def argv(self, world: Path, out: Path) -> list[str]:
        """The command line, with ``-o`` into the (new, empty) folder ``out``."""
        out.mkdir()
        checkpoint = world / self.checkpoint if self.checkpoint else MLP
        config = ["-c", str(world / self.config)] if self.config else []
        return ["spectrum", str(checkpoint), *config, *FAST, *self.args, "-o", str(out / "r.json")]


def _set(*pairs: str) -> tuple[str, ...]:
    return tuple(a for pair in pairs for a in ("--set", pair))


FORMS = "mean loss over the batch"
CASES: dict[str, Case] = {
    # 1. unbounded documents
    "loop": Case("loop.yaml", needles=("loop.yaml", "line", "alias *loop", "contains it")),
    "deep": Case("deep.yaml", needles=("deep.yaml", "line 8", f"more than {MAX_DEPTH} levels")),
    "alias_deep": Case("alias_deep.yaml", needles=("alias_deep.yaml", f"more than {MAX_DEPTH}")),
    "huge": Case("huge.yaml", needles=("huge.yaml", "larger than 1 MiB")),
    # 2. not UTF-8 text, not a file, not one YAML document
    "latin1": Case("latin1.yaml", needles=("latin1.yaml", "not UTF-8", "0xe9")),
    "utf16": Case("utf16.yaml", needles=("utf16.yaml", "not UTF-8", "0xff at offset 0")),
    "garbage": Case("garbage.yaml", needles=("garbage.yaml", "not UTF-8", "0x80 at offset 128")),
    "nul": Case("nul.yaml", needles=("nul.yaml", "invalid YAML", "#x0000")),
    "folder": Case("folder.yaml", needles=("folder.yaml", "cannot read config", "directory")),
    "extends_latin1": Case("extends_latin1.yaml", needles=("/latin1.yaml", "not UTF-8")),
    "two_documents": Case("two_docs.yaml", needles=("two_docs.yaml", "invalid YAML", "line 8",
                                                    "single document")),
    "tabs": Case("tabs.yaml", needles=("tabs.yaml", "invalid YAML", "line 9")),
    "python_tag": Case("pwn.yaml", needles=("pwn.yaml", "invalid YAML", "python/object/apply")),
    "newline_key": Case("newline_key.yaml", needles=("newline_key.yaml", "se\\ned", "unknown key")),
    # 3. data
    "scalars_npz": Case("data_scalars.npz.yaml", needles=("data_scalars.npz.yaml", "data.path",
                                                          "scalars.npz", "x is a scalar")),
    "scalar_y_npz": Case("data_scalar_y.npz.yaml", needles=("scalar_y.npz", "y is a scalar")),
    "scalars_pt": Case("data_scalars.pt.yaml", needles=("scalars.pt", "x is a scalar")),
    "uneven_npz": Case("data_uneven.npz.yaml", needles=("uneven.npz", "x has 100 samples but y "
                                                        "has 99")),
    "object_array": Case("data_objects.npz.yaml", needles=("objects.npz", "array 'x'",
                                                           "Object arrays")),
    "string_array": Case("data_words.npz.yaml", needles=("words.npz", "array 'x'", "str_")),
    "no_y": Case("data_no_y.npz.yaml", needles=("no_y.npz", "no array 'y'", "'labels'")),
    "no_x": Case("data_no_x.npz.yaml", needles=("no_x.npz", "no array 'x'", "'y'")),
    "npy_named_npz": Case("data_array.npz.yaml", needles=("array.npz", "holds a ndarray")),
    "not_a_zip": Case("data_text.npz.yaml", needles=("text.npz", "cannot be read")),
    "pt_list": Case("data_list.pt.yaml", needles=("list.pt", "holds a list", "'x' and 'y'")),
    "pt_tensor": Case("data_tensor.pt.yaml", needles=("tensor.pt", "holds a Tensor")),
    "data_folder": Case("data_folder.yaml", needles=("data.path", "lone", "not a regular file")),
    "pt_ragged": Case("data_ragged.pt.yaml", needles=("ragged.pt", "array 'x' cannot be read")),
    "float_targets": Case("data_float_y.npz.yaml", needles=("data_float_y.npz.yaml", "batch 0",
                                                            "loss.factory", "failed")),
    "factory_scalars": Case("factory_scalars.yaml", needles=("factory_scalars.yaml",
                                                             "data.factory", "x is a scalar")),
    "factory_uneven": Case("factory_uneven.yaml", needles=("data.factory", "x has 10 samples "
                                                           "but y has 9")),
    "factory_exits": Case("factory_leaves.yaml", needles=("data.factory", "SystemExit: 3")),
    "factory_two_lines": Case("factory_shouts.yaml", needles=("data.factory", "first line "
                                                              "second line")),
    # 4. losses that are not a mean loss with a graph to the weights
    "loss_detached": Case("loss_detached.yaml", needles=("loss_detached.yaml", "loss.fn",
                                                         "does not depend on the parameters")),
    "loss_constant": Case("loss_constant.yaml", needles=("loss.fn", "no grad_fn")),
    "loss_no_grad": Case("loss_under_no_grad.yaml", needles=("loss.fn", "no grad_fn")),
    "loss_number": Case("loss_number.yaml", needles=("loss.fn", "returned a float", FORMS)),
    "loss_none": Case("loss_nothing.yaml", needles=("loss.fn", "returned None for batch 0")),
    "loss_per_sample": Case("loss_per_sample.yaml", needles=("loss.fn", "shape [200]", FORMS)),
    "loss_integer": Case("loss_integer.yaml", needles=("loss.fn", "an int64 tensor", "real scalar")),
    "loss_complex": Case("loss_complex_.yaml", needles=("loss.fn", "complex64 tensor")),
    "loss_triple": Case("loss_triple.yaml", needles=("loss.fn", "a tuple of 3", "sample count")),
    "loss_single": Case("loss_single.yaml", needles=("loss.fn", "a tuple of 1")),
    "loss_empty": Case("loss_empty.yaml", needles=("loss.fn", "a tuple of 0")),
    "loss_raises": Case("loss_raises.yaml", needles=("loss_raises.yaml", "loss.fn", "batch 0",
                                                     "first line second line")),
    "criterion_per_sample": Case("criterion_none.yaml", needles=(
        "criterion_none.yaml", "loss.factory", "shape [200]", "reduction")),
    # 5. counts
    "count_zero": Case("loss_zero_last.yaml", _set("data.max_samples=180", "data.batch_size=50"),
                       ("loss_zero_last.yaml", "loss.fn", "returned a sample count of 0 for "
                        "batch 3; counts must be positive")),
    "count_negative": Case("loss_negative.yaml", needles=("loss.fn", "sample count of -200")),
    "count_nan": Case("loss_nan_count.yaml", needles=("loss.fn", "sample count of nan")),
    "count_word": Case("loss_word_count.yaml", needles=("loss.fn", "sample count of a str")),
    "count_vector": Case("loss_vector_count.yaml", needles=("loss.fn", "sample count of a "
                                                            "float32 tensor of shape [2]")),
    # 6. --set
    "set_bad_yaml": Case(args=_set("data.batch_size=[1,"), needles=(
        "--set", "data.batch_size", "invalid YAML", "line 1")),
    "set_empty_key": Case(args=_set("=3"), needles=("--set", "=3", "KEY.PATH=VALUE")),
    "set_leading_dot": Case(args=_set(".a=1"), needles=("--set", ".a=1", "KEY.PATH=VALUE")),
    "set_double_dot": Case(args=_set("data..batch_size=1"), needles=("--set", "KEY.PATH")),
    "set_trailing_dot": Case(args=_set("data.=1"), needles=("--set", "data.=1")),
    "set_newline_key": Case(args=_set("da\nta.batch_size=1"), needles=("--set", "da\\nta")),
    "set_undefined_alias": Case(args=_set("seed=*nope"), needles=("--set", "seed",
                                                                  "undefined alias")),
    "set_python_tag": Case(args=_set("seed=!!python/object/apply:os.getpid []"),
                           needles=("--set", "seed", "invalid YAML")),
    "set_under_scalar": Case(args=_set("data.max_samples.x=1"), needles=(
        "--set", "data.max_samples", "not a mapping")),
    # 7. devices and seeds
    **{f"device_{name}": Case(args=("--device", device), needles=("device", "not a device"))
       for name, device in (("mps", "mps"), ("xla", "xla"), ("tpu", "tpu"), ("cuda_x", "cuda:x"),
                            ("upper", "CUDA"), ("arabic_digit", "cuda:\u0663"), ("empty", ""),
                            ("cuda_minus", "cuda:-1"))},
    "device_cuda_99": Case(args=("--device", "cuda:99"), needles=("device", "'cuda:99'",
                                                                   "this machine has")),
    "device_in_file": Case("device_mps.yaml", needles=("device_mps.yaml", "device", "'mps'")),
    "seed_negative": Case(args=("--seed", "-1"), needles=("seed", "greater than or equal to 0")),
    "seed_2_64": Case(args=("--seed", str(2**64)), needles=("seed", "less than")),
    "seed_power": Case(args=("--seed", "2**64"), needles=("--seed", "integer")),
    "seed_set_huge": Case(args=_set("seed=1e30"), needles=("seed",)),
    # 8. a missing checkpoint, whether a config is found or not
    "missing_checkpoint_no_config": Case(None, checkpoint="lone/nope.pt", cwd="lone", needles=(
        "nope.pt", "checkpoint not found")),
    # 9. non-finite numbers
    **{f"nonfinite_{key}_{i}": Case(args=_set(f"{key}={value}"), needles=(key,))
       for key in ("data.batch_size", "data.max_samples", "seed", "engine.memory_budget")
       for i, value in enumerate((".inf", "-.inf", ".nan", "1e999"))},
    "nonfinite_in_file": Case("nan_batch.yaml", needles=("nan_batch.yaml", "data.batch_size",
                                                         "finite")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2(world, tmp_path, name):
    case = CASES[name]
    if name == "device_cuda_99" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a 100th CUDA device")
    inputs = [world / case.config] if case.config and (world / case.config).is_file() else []
    before = snapshot(*inputs)
    ran = invoke(case.argv(world, tmp_path / "out"), cwd=world / case.cwd if case.cwd else None)
    line = assert_one_error(ran, case.needles, folder=tmp_path / "out", before=[],
                            unchanged=before)
    assert "no config found" not in line
    assert not (world / "pwned").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_on_a_machine_without_it(world, tmp_path):
    ran = invoke(Case(args=("--device", "cuda")).argv(world, tmp_path / "out"))
    assert_one_error(ran, ("--device cuda", "device", "'cuda'", "no CUDA device"),
                     folder=tmp_path / "out", before=[])


def test_missing_checkpoint_is_named_even_beside_a_config(world, tmp_path):
    """A landscape.yaml in the working directory would be found; the checkpoint is still the
    culprit."""
    folder = tmp_path / "here"
    folder.mkdir()
    write_config(folder / "landscape.yaml")
    ran = invoke(Case(None, checkpoint="absent/nope.pt").argv(world, tmp_path / "out"),
                 cwd=folder)
    assert_one_error(ran, ("nope.pt", "checkpoint not found"), folder=tmp_path / "out", before=[])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_unreadable_config(world, tmp_path):
    path = write_config(tmp_path / "secret.yaml")
    path.chmod(0)
    ran = invoke(Case(None, args=("-c", str(path))).argv(tmp_path, tmp_path / "out"))
    assert_one_error(ran, ("secret.yaml", "cannot read config", "Permission denied"),
                     folder=tmp_path / "out", before=[])


# ----------------------------------------------------------------------------- bombs, in a process


def _set_bomb() -> str:
    """A billion laughs in one ``--set`` value: the lists, anchored, in one flow sequence."""
    return "model.kwargs.junk=[" + ", ".join(_bomb()) + "]"


#: name: (config, extra arguments, needles); each once hung the tool (killed after 25 s).
BOMBS = {
    "billion_laughs": ("bomb.yaml", (), ("bomb.yaml", "invalid YAML", "line", "aliases expand")),
    "set_value": ("base.yaml", ("--set", _set_bomb()), ("--set", "model.kwargs.junk",
                                                         "aliases expand")),
}


@pytest.fixture(scope="module")
def bombs(world, tmp_path_factory) -> dict[str, tuple]:
    """Each bomb in its own ``python -m landscape_cli`` process, two at a time: (the run, its
    seconds, its output folder)."""
    outputs = tmp_path_factory.mktemp("bomb_outputs")

    def one(name: str):
        config, args, _ = BOMBS[name]
        out = outputs / name
        argv = Case(config, args).argv(world, out)
        started = time.perf_counter()
        ran = run_process(argv, timeout=30)
        return ran, time.perf_counter() - started, out

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(BOMBS, pool.map(one, BOMBS)))


@pytest.mark.parametrize("name", list(BOMBS))
def test_alias_bomb_is_refused_at_once(bombs, name):
    ran, seconds, out = bombs[name]
    assert_one_error(ran, BOMBS[name][2], folder=out, before=[])
    assert seconds < 25  # mostly importing torch; the refusal itself takes milliseconds


# ----------------------------------------------------------------------------- what still works


@pytest.mark.parametrize("config", ["loss_with_count.yaml", "loss_with_float_count.yaml",
                                    "bom.yaml", "aliases.yaml"])
def test_accepted_forms_still_run(world, config):
    """A loss with its sample count (an int, or a float tensor), a config with a UTF-8 BOM,
    one with an alias."""
    ran = invoke(["spectrum", MLP, "-c", world / config, *FAST, "--json"])
    assert ran.returncode == 0, ran.detail()
    assert json.loads(ran.stdout)["results"]["top_eigenvalues"][0] > 0


def test_a_float_key_refuses_non_finite_values():
    """Every section refuses inf and nan in a float key (there is none yet: a probe)."""

    class Probe(_Section):
        rate: float = 1.0

    assert Probe(rate=0.5).rate == 0.5
    for value in (float("inf"), float("-inf"), float("nan"), "inf", "nan"):
        with pytest.raises(ValidationError, match="finite"):
            Probe(rate=value)
