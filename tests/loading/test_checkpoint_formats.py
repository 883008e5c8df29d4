"""Every accepted checkpoint layout (DESIGN §3) gives the same top eigenvalue as the plain
state dict, and the report says what was detected; ``inspect`` describes each layout and
lists the unsafe globals of a malicious pickle without running it.

The variants are built from ``sample_checkpoints/mlp/seed0_epoch100.pt``; the real CLI runs
in-process (``helpers.runners.invoke``) with ``--dtype float64 --top 1`` on 300 samples.
"""

from __future__ import annotations

import json
import os
import pickle
import posix
from pathlib import Path

import pytest
import torch
from helpers.runners import invoke
from helpers.samples import ROOT
from safetensors.torch import save_file

SAMPLES = ROOT / "sample_checkpoints" / "mlp"
MLP = SAMPLES / "seed0_epoch100.pt"
MLP_EARLY = SAMPLES / "seed0_epoch010.pt"
MLP_CONFIG = ROOT / "configs" / "mlp.yaml"
SPECTRUM_ARGS = ("-c", str(MLP_CONFIG), "--dtype", "float64", "--top", "1", "--json",
                 "--set", "data.max_samples=300")
MODEL_KEYS = ["0.weight", "0.bias", "2.weight", "2.bias"]
SHAPES = {"0.weight": [32, 64], "0.bias": [32], "2.weight": [10, 32], "2.bias": [10]}

LIGHTNING_META = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0"}


def _optimizer_state(sd: dict[str, torch.Tensor]) -> dict:
    """What ``optimizer.state_dict()`` of Adam looks like (int keys, tensors, floats)."""
    return {
        "state": {i: {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(t),
                      "exp_avg_sq": torch.zeros_like(t)} for i, t in enumerate(sd.values())},
        "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                          "amsgrad": False, "params": list(range(len(sd)))}],
    }


class _Pwn:
    """Unpickling this runs a shell command (os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Cwd:
    def __reduce__(self):
        return (posix.getcwd, ())


def _lightning(sd: dict[str, torch.Tensor], extra: dict | None = None) -> dict:
    return {**LIGHTNING_META,
            "state_dict": {**{"model." + k: v for k, v in sd.items()}, **(extra or {})},
            "optimizer_states": [_optimizer_state(sd)], "lr_schedulers": [],
            "callbacks": {}, "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01}}


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """The same weights in every layout the tool accepts, plus a few it must treat specially."""
    d = tmp_path_factory.mktemp("formats")
    sd = torch.load(MLP, map_location="cpu", weights_only=True)
    assert list(sd) == MODEL_KEYS
    early = torch.load(MLP_EARLY, map_location="cpu", weights_only=True)
    out: dict[str, Path] = {}

    def save(name: str, obj, **kwargs) -> None:
        out[name] = d / name
        torch.save(obj, out[name], **kwargs)

    save("plain.pt", sd)
    save("legacy.pt", sd, _use_new_zipfile_serialization=False)
    save("lightning.ckpt", _lightning(sd))
    # A LightningModule that also holds its criterion: `criterion.weight` is not the model's.
    save("lightning_criterion.ckpt", _lightning(sd, {"criterion.weight": torch.ones(10)}))
    # Lightning + DDP: model.module.0.weight
    save("lightning_ddp.ckpt", {**LIGHTNING_META,
                                "state_dict": {"model.module." + k: v for k, v in sd.items()}})
    save("module.pt", {"module." + k: v for k, v in sd.items()})
    save("orig_mod.pt", {"_orig_mod." + k: v for k, v in sd.items()})
    save("module_orig_mod.pt", {"module._orig_mod." + k: v for k, v in sd.items()})
    # FSDP infixes at different depths: _fsdp_wrapped_module.0.weight, 2._fsdp_wrapped_module.bias
    save("fsdp.pt", {(f"_fsdp_wrapped_module.{k}" if k.startswith("0.")
                      else k.replace(".", "._fsdp_wrapped_module.", 1)): v for k, v in sd.items()})
    save("model_state_dict.pt", {"epoch": 7, "model_state_dict": sd,
                                 "optimizer_state_dict": _optimizer_state(sd)})
    # `model` comes before `ema` in the auto search order: only checkpoint.key=ema finds `sd`.
    save("ema.pt", {"model": early, "ema": sd})
    save("dtypes.pt", {"0.weight": sd["0.weight"].half(), "0.bias": sd["0.bias"].double(),
                       "2.weight": sd["2.weight"], "2.bias": sd["2.bias"].bfloat16(),
                       "steps": torch.tensor([3, 4], dtype=torch.int64)})

    out["plain.safetensors"] = d / "plain.safetensors"
    save_file(sd, out["plain.safetensors"])
    hf = d / "hf_safetensors"
    hf.mkdir()
    save_file(sd, hf / "model.safetensors")
    out["hf_safetensors"] = hf
    sharded = d / "hf_sharded"
    sharded.mkdir()
    shards = {"model-00001-of-00002.safetensors": MODEL_KEYS[:2],
              "model-00002-of-00002.safetensors": MODEL_KEYS[2:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, sharded / file)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": 4 * sum(t.numel() for t in sd.values())},
        "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    out["hf_sharded"] = sharded
    hf_bin = d / "hf_bin"
    hf_bin.mkdir()
    torch.save(sd, hf_bin / "pytorch_model.bin")
    out["hf_bin"] = hf_bin

    # Malicious pickles: loading them with weights_only=False would create `pwned`.
    marker = d / "pwned"
    out["pwned"] = marker
    save("evil_zip.pt", {"state_dict": sd, "payload": _Pwn(marker)})
    save("evil_legacy.pt", {"state_dict": sd, "payload": _Pwn(marker)},
         _use_new_zipfile_serialization=False)
    out["evil_proto4.pkl"] = d / "evil_proto4.pkl"
    with open(out["evil_proto4.pkl"], "wb") as handle:  # a repeated module name is memoized
        pickle.dump({"a": _Pwn(marker), "b": _Cwd()}, handle, protocol=4)
    assert not marker.exists()
    return out


def _spectrum(path: Path, *extra: str) -> dict:
    result = invoke(["spectrum", str(path), *SPECTRUM_ARGS, *extra])
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def _inspect(path: Path, *extra: str):
    result = invoke(["inspect", str(path), "--json", *extra])
    assert result.returncode == 0, result.output
    return json.loads(result.stdout), result


@pytest.fixture(scope="module")
def reference(variants) -> float:
    """λ_max of the plain state dict."""
    doc = _spectrum(variants["plain.pt"])
    assert doc["status"] == "ok"
    assert doc["checkpoint"]["format"] == "state_dict"
    assert doc["checkpoint"]["stripped_prefix"] is None
    assert doc["checkpoint"]["key"] is None
    assert doc["settings"]["n_samples"] == 300
    assert doc["settings"]["dtype"] == "float64"
    assert doc["warnings"] == []
    value = doc["results"]["top_eigenvalues"][0]
    assert doc["results"]["top_converged"] == [True]
    # The converged MLP is flat but not degenerate: λ_max ≈ 0.188 on the first 300 digits.
    assert 0.17 < value < 0.21
    return value


# name, extra CLI args, what the report's `checkpoint` section must say
CASES = [
    ("legacy.pt", (), {"format": "state_dict", "stripped_prefix": None, "key": None}),
    ("lightning.ckpt", (), {"format": "lightning", "key": "state_dict", "stripped_prefix": "model.",
                            "epoch": 3, "global_step": 120, "pytorch_lightning_version": "2.4.0"}),
    ("lightning_criterion.ckpt", (), {"format": "lightning", "stripped_prefix": "model.",
                                      "epoch": 3, "global_step": 120}),
    ("lightning_ddp.ckpt", (), {"format": "lightning", "stripped_prefix": "module. + model.",
                                "epoch": 3, "global_step": 120}),
    ("module.pt", (), {"format": "state_dict", "stripped_prefix": "module."}),
    ("orig_mod.pt", (), {"format": "state_dict", "stripped_prefix": "_orig_mod."}),
    ("module_orig_mod.pt", (), {"format": "state_dict", "stripped_prefix": "module. + _orig_mod."}),
    ("fsdp.pt", (), {"format": "state_dict", "stripped_prefix": "_fsdp_wrapped_module."}),
    ("model_state_dict.pt", (), {"format": "wrapped:model_state_dict", "key": "model_state_dict",
                                 "stripped_prefix": None, "epoch": 7}),
    ("ema.pt", ("--set", "checkpoint.key=ema"), {"format": "wrapped:ema", "key": "ema",
                                                 "stripped_prefix": None}),
    ("plain.safetensors", (), {"format": "safetensors", "stripped_prefix": None}),
    ("hf_safetensors", (), {"format": "hf_safetensors", "stripped_prefix": None}),
    ("hf_sharded", (), {"format": "hf_safetensors_sharded", "stripped_prefix": None}),
    ("hf_bin", (), {"format": "hf_bin", "stripped_prefix": None}),
]


@pytest.mark.parametrize("name, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_same_top_eigenvalue_in_every_format(variants, reference, name, extra, expected):
    doc = _spectrum(variants[name], *extra)
    value = doc["results"]["top_eigenvalues"][0]
    assert abs(value - reference) <= 1e-10 * abs(reference), (name, value, reference)
    ckpt = doc["checkpoint"]
    for key, want in expected.items():
        assert ckpt.get(key) == want, (name, key, ckpt)
    assert ckpt["path"] == str(variants[name])
    assert ckpt["n_params"] == 2410
    assert len(ckpt["sha256"]) == 64
    if "epoch" not in expected:
        assert "epoch" not in ckpt and "global_step" not in ckpt


def test_lightning_extra_attribute_is_ignored_with_a_warning(variants):
    doc = _spectrum(variants["lightning_criterion.ckpt"])
    assert any("criterion.weight" in w and "ignored" in w for w in doc["warnings"]), doc["warnings"]
    # The plain Lightning file has nothing outside `model.` and so nothing to warn about.
    assert _spectrum(variants["lightning.ckpt"])["warnings"] == []


def test_checkpoint_key_matters(variants, reference):
    """Without checkpoint.key=ema, auto search picks `model` (the epoch-10 weights)."""
    doc = _spectrum(variants["ema.pt"])
    assert doc["checkpoint"]["key"] == "model"
    assert doc["checkpoint"]["format"] == "wrapped:model"
    assert abs(doc["results"]["top_eigenvalues"][0] - reference) > 0.1 * reference


def test_sharded_folder_digest_covers_every_shard(variants, reference, tmp_path):
    """Changing one shard changes the folder's sha256 (batch cache keys depend on it)."""
    import shutil

    first = _spectrum(variants["hf_sharded"])["checkpoint"]["sha256"]
    copy = tmp_path / "hf_sharded"
    shutil.copytree(variants["hf_sharded"], copy)
    sd = torch.load(MLP, map_location="cpu", weights_only=True)
    save_file({"2.weight": sd["2.weight"] * 2, "2.bias": sd["2.bias"]},
              copy / "model-00002-of-00002.safetensors")
    doc = _spectrum(copy)
    assert doc["checkpoint"]["sha256"] != first
    # The second shard's weights are used: a doubled last layer saturates the softmax.
    assert abs(doc["results"]["top_eigenvalues"][0] - reference) > 0.5 * reference


# ----------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("name, fmt, prefix, key", [
    ("plain.pt", "state_dict", None, None),
    ("lightning.ckpt", "lightning", "model.", "state_dict"),
    ("module.pt", "state_dict", "module.", None),
    ("module_orig_mod.pt", "state_dict", "module._orig_mod.", None),
    ("model_state_dict.pt", "wrapped:model_state_dict", None, "model_state_dict"),
    ("plain.safetensors", "safetensors", None, None),
    ("hf_sharded", "hf_safetensors_sharded", None, None),
    ("hf_bin", "hf_bin", None, None),
])
def test_inspect_formats(variants, name, fmt, prefix, key):
    doc, result = _inspect(variants[name])
    res = doc["results"]
    assert doc["command"] == "inspect"
    assert res["format"] == fmt and doc["checkpoint"]["format"] == fmt
    assert res["detected_prefix"] == prefix
    assert res["key"] == key
    assert res["n_tensors"] == 4
    assert res["n_params"] == 2410 == doc["checkpoint"]["n_params"]
    assert res["unsafe_globals"] == [] and res["loadable"] is True
    strip = len(prefix) if prefix else 0
    assert {t["name"][strip:]: t["shape"] for t in res["tensors"]} == SHAPES
    assert {t["dtype"] for t in res["tensors"]} == {"float32"}
    assert sum(t["numel"] for t in res["tensors"]) == 2410
    assert result.stderr == ""


def test_inspect_reports_lightning_metadata(variants):
    doc, _ = _inspect(variants["lightning.ckpt"])
    assert doc["results"]["metadata"] == LIGHTNING_META


def test_inspect_key_option(variants):
    doc, _ = _inspect(variants["ema.pt"])
    assert doc["results"]["key"] == "model"
    doc, _ = _inspect(variants["ema.pt"], "--key", "ema")
    assert doc["results"]["key"] == "ema"
    assert doc["results"]["format"] == "wrapped:ema"


def test_inspect_dtypes(variants):
    doc, _ = _inspect(variants["dtypes.pt"])
    res = doc["results"]
    assert {t["name"]: t["dtype"] for t in res["tensors"]} == {
        "0.weight": "float16", "0.bias": "float64", "2.weight": "float32",
        "2.bias": "bfloat16", "steps": "int64"}
    assert res["n_tensors"] == 5
    assert res["n_params"] == 2410  # integer tensors are not parameters


@pytest.mark.parametrize("name, fmt, globals_", [
    ("evil_zip.pt", "torch_zip", ["posix.system"]),
    ("evil_legacy.pt", "pickle", ["posix.system"]),
    ("evil_proto4.pkl", "pickle", ["posix.getcwd", "posix.system"]),
])
def test_inspect_lists_unsafe_globals_without_running_them(variants, name, fmt, globals_):
    doc, result = _inspect(variants[name])
    res = doc["results"]
    assert res["unsafe_globals"] == globals_
    assert res["loadable"] is False
    assert res["format"] == fmt
    assert res["n_tensors"] == 0
    assert not variants["pwned"].exists(), "inspect ran the pickle's code"
    assert any("--allow-global" in w and "--trust-checkpoint" in w for w in doc["warnings"])
    assert "posix.system" in result.stderr  # the warning is also shown on stderr


def test_spectrum_refuses_unsafe_pickle_in_process(variants):
    """The same refusal in-process (the subprocess tests check streams): exit 2, no code run."""
    for name in ("evil_zip.pt", "evil_legacy.pt"):
        result = invoke(["spectrum", str(variants[name]), *SPECTRUM_ARGS])
        assert result.returncode == 2
        assert result.stdout == ""
        assert "posix.system" in result.stderr and "--allow-global" in result.stderr
        assert not variants["pwned"].exists()
