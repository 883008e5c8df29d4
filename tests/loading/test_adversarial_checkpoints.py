"""Hostile and broken checkpoints (issue 16): every one exits 2 with one ``error:`` line that
names the file (and the key, entry or global at fault), never an internal error (exit 3).

One class per section: folders that point outside themselves, malformed pickles, every
byte-level truncation or corruption, tensors the model cannot take, forbidden globals in
every opcode form, non-finite weights, and messages that untrusted names could break.
Most cases run the real CLI in-process (a checkpoint is read before any model is built, so a
refusal costs milliseconds); the byte-level sweeps call ``read_checkpoint`` directly.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.adversarial import FAST, assert_one_error, snapshot, write_config
from helpers.runners import invoke, run_process
from helpers.samples import MLP_CKPT as MLP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from landscape_cli.config import load_config
from landscape_cli.errors import CheckpointError
from landscape_cli.loading.assemble import build_model, load_weights
from landscape_cli.loading.checkpoint import Checkpoint, read_checkpoint
from landscape_cli.loading.matching import match_state_dict

SAMPLE = MLP.parent / "seed0_epoch001.pt"
CORRUPT = "corrupt or truncated checkpoint"
SAFETY = ("--allow-global", "--trust-checkpoint")


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return torch.load(MLP, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "mlp.yaml")


def _spectrum(path: Path, config: Path, *extra: str):
    return invoke(["spectrum", path, "-c", config, *FAST, "--json", *extra])


def _refused(path: Path, config: Path, needles, *extra: str) -> str:
    """The CLI refuses ``path``: exit 2, one line naming it and every needle, file unchanged."""
    before = snapshot(path) if path.is_file() else None
    return assert_one_error(_spectrum(path, config, *extra), [path.name, *needles],
                            unchanged=before)


def _accepted(path: Path, config: Path, *extra: str) -> dict:
    ran = _spectrum(path, config, *extra)
    assert ran.returncode == 0, ran.detail()
    return json.loads(ran.stdout)


def _torch_zip(path: Path, data_pkl: bytes | None = None, drop: str | None = None) -> Path:
    """A real ``torch.save`` zip of a tiny state dict, with ``data.pkl`` replaced (the pickle
    ``torch.load`` runs) or the member ending in ``drop`` left out."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2, 3)}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            if drop is not None and name.endswith(drop):
                continue
            replace = data_pkl is not None and name.endswith("/data.pkl")
            target.writestr(name, data_pkl if replace else source.read(name))
    return path


# ----------------------------------------------------------------------------- 1. folders


def _sharded(folder: Path, sd: dict[str, torch.Tensor], weight_map: dict) -> Path:
    """A folder with an index naming the given shard entries (files are not written)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def _split(sd, first: str, second: str) -> dict[str, str]:
    keys = list(sd)
    return {k: (first if i < 2 else second) for i, k in enumerate(keys)}


@pytest.fixture(scope="module")
def outside(tmp_path_factory, sd) -> Path:
    """A valid shard with the last two tensors, outside every test folder."""
    path = tmp_path_factory.mktemp("elsewhere") / "outside.safetensors"
    save_file({k: sd[k] for k in list(sd)[2:]}, path)
    torch.save({k: sd[k] for k in list(sd)[2:]}, path.with_suffix(".bin"))
    return path


def _inside_shard(folder: Path, sd) -> None:
    save_file({k: sd[k] for k in list(sd)[:2]}, folder / "a.safetensors")


@pytest.mark.parametrize("how", ["relative", "absolute", "symlinked_shard", "symlinked_folder"])
def test_shard_outside_the_folder_is_refused(tmp_path, sd, outside, config, how):
    folder = tmp_path / "hf"
    if how == "relative":
        entry = os.path.relpath(outside, folder)
    elif how == "absolute":
        entry = str(outside)
    elif how == "symlinked_shard":  # a plain name, but the file is a link to elsewhere
        entry = "b.safetensors"
        folder.mkdir()
        (folder / entry).symlink_to(outside)
    else:  # a sub-folder that is a link to elsewhere
        entry = f"sub/{outside.name}"
        folder.mkdir()
        (folder / "sub").symlink_to(outside.parent)
    _sharded(folder, sd, _split(sd, "a.safetensors", entry))
    _inside_shard(folder, sd)
    assert_one_error(_spectrum(folder, config), ["model.safetensors.index.json", entry,
                                                 "outside the checkpoint folder"])


def test_bin_index_outside_the_folder_is_refused(tmp_path, sd, outside, config):
    folder = tmp_path / "hf_bin"
    folder.mkdir()
    torch.save({k: sd[k] for k in list(sd)[:2]}, folder / "a.bin")
    entry = os.path.relpath(outside.with_suffix(".bin"), folder)
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": _split(sd, "a.bin", entry)}))
    assert_one_error(_spectrum(folder, config), ["pytorch_model.bin.index.json", entry, "outside"])


def test_single_file_symlinked_outside_is_refused(tmp_path, sd, config):
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file(sd, elsewhere)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(elsewhere)
    assert_one_error(_spectrum(folder, config), [str(folder), "'model.safetensors'", "outside"])


def test_hugging_face_cache_snapshot_is_read(tmp_path, sd):
    """A cache snapshot's files are links into the repository's ``blobs``: that stays inside."""
    repo = tmp_path / "models--org--mlp"
    (repo / "blobs").mkdir(parents=True)
    snapshot_dir = repo / "snapshots" / "0123abc"
    snapshot_dir.mkdir(parents=True)
    for name, keys in (("a.safetensors", list(sd)[:2]), ("b.safetensors", list(sd)[2:])):
        save_file({k: sd[k] for k in keys}, repo / "blobs" / f"sha-{name}")
        (snapshot_dir / name).symlink_to(Path("../../blobs") / f"sha-{name}")
    _sharded(snapshot_dir, sd, _split(sd, "a.safetensors", "b.safetensors"))
    ckpt = read_checkpoint(snapshot_dir)
    assert ckpt.format == "hf_safetensors_sharded" and sorted(ckpt.tensors) == sorted(sd)
    # ... but a link out of the cached repository is still refused.
    (snapshot_dir / "b.safetensors").unlink()
    (snapshot_dir / "b.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    save_file({k: sd[k] for k in list(sd)[2:]}, tmp_path / "nowhere.safetensors")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        read_checkpoint(snapshot_dir)


MALFORMED_INDEX = {
    "not_json": (b"{weight_map: ", "not a valid shard index"),
    "not_utf8": (b"\xff\xfe{}", "not a valid shard index"),
    "deeply_nested": (b"[" * 100_000 + b"]" * 100_000, "not a valid shard index"),
    "a_list": (b"[1, 2]", "'weight_map' must be"),
    "no_weight_map": (b'{"metadata": {}}', "'weight_map' must be"),
    "weight_map_list": (b'{"weight_map": ["a.safetensors"]}', "'weight_map' must be"),
    "weight_map_empty": (b'{"weight_map": {}}', "'weight_map' must be"),
    "value_int": (b'{"weight_map": {"0.weight": 3}}', "entry '0.weight' is not a file name"),
    "value_null": (b'{"weight_map": {"0.weight": null}}', "entry '0.weight' is not a file name"),
    "value_list": (b'{"weight_map": {"0.weight": ["a"]}}', "entry '0.weight' is not a file name"),
    "value_empty": (b'{"weight_map": {"0.weight": ""}}', "entry '0.weight' is not a file name"),
    "missing_shard": (b'{"weight_map": {"0.weight": "gone.safetensors"}}',
                      "shard files missing: gone.safetensors"),
    "nul_in_name": (b'{"weight_map": {"0.weight": "a\\u0000b.safetensors"}}', "cannot be resolved"),
    "shard_is_a_folder": (b'{"weight_map": {"0.weight": "."}}', "shard files missing"),
}


@pytest.mark.parametrize("case", list(MALFORMED_INDEX))
def test_malformed_index_names_the_index(tmp_path, config, case):
    content, needle = MALFORMED_INDEX[case]
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_bytes(content)
    assert_one_error(_spectrum(folder, config), ["model.safetensors.index.json", needle])


def test_tensor_in_two_shards_is_refused(tmp_path, sd, config):
    folder = _sharded(tmp_path / "hf", sd, {"0.weight": "a.safetensors", "2.weight": "b.safetensors"})
    save_file(sd, folder / "a.safetensors")
    save_file({"2.weight": sd["2.weight"] * 2}, folder / "b.safetensors")
    assert_one_error(_spectrum(folder, config), ["'2.weight'", "a.safetensors", "b.safetensors"])


# ----------------------------------------------------------------------------- 2. malformed pickles


def _legacy(path: Path, obj) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


MALFORMED_PICKLES = {
    "empty_stack": b"\x80\x02.",
    "tuple_without_mark": b"\x80\x02t.",
    "short_read": b"\x80\x02X\x10\x00\x00\x00ab",
    "no_stop": b"\x80\x02}q\x00",
    "unknown_opcode": b"\x80\x02\xff.",
    "ordered_dict_bad_args": b"\x80\x02ccollections\nOrderedDict\nK\x01K\x02K\x03\x87R.",
    "rebuild_tensor_garbage": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nK\x01K\x02\x86R.",
    "rebuild_tensor_int_storage": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x00K\x02"
                                   b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR."),
    "persistent_id_garbage": b"\x80\x02(X\x07\x00\x00\x00storageK\x01tQ.",
    "set_item_on_a_list": b"\x80\x02]K\x01K\x02s.",
    "protocol_4_state_dict": pickle.dumps({"w": 1}, protocol=4),
}


@pytest.mark.parametrize("case", list(MALFORMED_PICKLES))
def test_malformed_pickle_in_a_zip(tmp_path, config, case):
    path = _torch_zip(tmp_path / f"{case}.pt", MALFORMED_PICKLES[case])
    _refused(path, config, [CORRUPT])


@pytest.mark.parametrize("case", ["empty_stack", "short_read", "ordered_dict_bad_args",
                                  "rebuild_tensor_garbage"])
def test_malformed_pickle_as_a_legacy_file(tmp_path, config, case):
    path = tmp_path / f"{case}.pt"
    path.write_bytes(MALFORMED_PICKLES[case])
    _refused(path, config, [CORRUPT])


def test_zip_members_missing_or_lying(tmp_path, config):
    _refused(_torch_zip(tmp_path / "no_record.pt", drop="data/0"), config, [CORRUPT, "data/0"])
    _refused(_torch_zip(tmp_path / "no_pickle.pt", drop="data.pkl"), config, [CORRUPT, "data.pkl"])
    # the pickle claims a storage of 2**31 elements; the record holds 6
    with zipfile.ZipFile(_torch_zip(tmp_path / "real.pt")) as archive:
        real = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    lying = real.replace(b"K\x06t", b"J\xff\xff\xff\x7ft")
    assert lying != real
    _refused(_torch_zip(tmp_path / "lying.pt", lying), config, [CORRUPT, "record size"])


def test_truncated_legacy_file(tmp_path, config, sd):
    data = _legacy(tmp_path / "full.pt", sd).read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        path = tmp_path / f"legacy_{cut}.pt"
        path.write_bytes(data[:cut])
        _refused(path, config, [CORRUPT])


def test_not_a_checkpoint_at_all(tmp_path, config):
    for name, content in (("text.pt", b"hello world\n"), ("zeros.pt", bytes(4096)),
                          ("random.pt", os.urandom(4096))):
        path = tmp_path / name
        path.write_bytes(content)
        _refused(path, config, [CORRUPT])


def _safetensors_variants(tmp_path: Path, sd) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    save_file(sd, good)
    data = good.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = data[8:8 + header_len]
    variants = {
        "huge_header_length": (2**62).to_bytes(8, "little") + data[8:],
        "header_not_json": data[:8] + b"x" * header_len + data[8 + header_len:],
        "header_cut": data[:8 + header_len // 2],
        "data_cut": data[:-100],
        "offsets_beyond": data[:8] + header.replace(b'"data_offsets":[0,', b'"data_offsets":[9,')
        + data[8 + header_len:],
        "tiny": data[:5],
    }
    out = {}
    for name, content in variants.items():
        out[name] = tmp_path / f"{name}.safetensors"
        out[name].write_bytes(content)
    return out


def test_corrupt_safetensors(tmp_path, config, sd):
    for path in _safetensors_variants(tmp_path, sd).values():
        _refused(path, config, [CORRUPT, "safetensors"])


# ----------------------------------------------------------------------------- 3. every byte


def _read_or_refuse(path: Path, label: str) -> None:
    """``read_checkpoint`` either reads the file or refuses it with a one-line
    ``CheckpointError`` that starts with its path; anything else is a bug."""
    try:
        read_checkpoint(path)
    except CheckpointError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, (label, message)
    except Exception as exc:  # the point: no other exception may escape
        pytest.fail(f"{label}: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, bytes]:
    """Small checkpoints (hundreds of bytes to ~1.5 KB) in each format."""
    d = tmp_path_factory.mktemp("tiny")
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor([3])}
    torch.save(state, d / "zip.pt")
    _legacy(d / "legacy.pt", state)
    save_file(state, d / "tiny.safetensors")
    return {name: (d / name).read_bytes() for name in ("zip.pt", "legacy.pt", "tiny.safetensors")}


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "tiny.safetensors"])
def test_every_truncation_is_read_or_refused(tmp_path, tiny, name):
    data = tiny[name]
    assert 100 < len(data) < 4000, len(data)
    path = tmp_path / name
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        _read_or_refuse(path, f"{name} cut at {cut} of {len(data)}")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corrupt") / "corrupt.pt"


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]),
                           st.integers(min_value=0, max_value=SAMPLE.stat().st_size - 1),
                           st.integers(min_value=1, max_value=255)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_corrupted_sample_is_read_or_refused(scratch, edits):
    data = bytearray(SAMPLE.read_bytes())
    for kind, at, byte in edits:
        at = min(at, len(data) - 1)
        if kind == "flip":
            data[at] ^= byte
        elif kind == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    scratch.write_bytes(bytes(data))
    _read_or_refuse(scratch, repr(edits))


def test_truncations_through_the_cli(tmp_path, config):
    """The one-line contract end to end: in-process, and in a real process."""
    data = SAMPLE.read_bytes()
    first, second = tmp_path / "cut_header.pt", tmp_path / "cut_tail.pt"
    first.write_bytes(data[:40])
    second.write_bytes(data[:-30])
    _refused(first, config, [CORRUPT])
    ran = run_process(["spectrum", second, "-c", config, *FAST, "--json"])
    assert_one_error(ran, [second.name, CORRUPT])


# ----------------------------------------------------------------------------- 4. dtypes


def _quiet(make):
    """``make()`` without torch's warning that the layout or dtype is beta or deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def _quantized(t: torch.Tensor) -> torch.Tensor:
    return _quiet(lambda: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8))


UNFIT = {
    "int64": (lambda t: t.long(), ["torch.int64", "torch.float32"]),
    "int32": (lambda t: t.int(), ["torch.int32", "torch.float32"]),
    "bool": (lambda t: t > 0, ["torch.bool", "torch.float32"]),
    "complex": (lambda t: t.to(torch.complex64), ["torch.complex64", "torch.float32"]),
    "sparse_coo": (lambda t: t.to_sparse(), ["sparse_coo", "dense torch.float32"]),
    "sparse_csr": (lambda t: _quiet(t.to_sparse_csr), ["sparse_csr", "dense torch.float32"]),
    "meta": (lambda t: t.to("meta"), ["meta tensor", "torch.float32"]),
    "quantized": (_quantized, ["torch.qint8", "torch.float32"]),
}


@pytest.mark.parametrize("case", list(UNFIT))
def test_tensor_the_model_cannot_take_is_refused(tmp_path, sd, config, case):
    make, needles = UNFIT[case]
    path = tmp_path / f"{case}.pt"
    torch.save({**sd, "0.weight": make(sd["0.weight"])}, path)
    _refused(path, config, ["'0.weight'", "checkpoint has", "the model expects", *needles])


def test_other_float_dtypes_load_with_one_warning(tmp_path, sd, config):
    path = tmp_path / "mixed.pt"
    torch.save({"0.weight": sd["0.weight"].half(), "0.bias": sd["0.bias"].bfloat16(),
                "2.weight": sd["2.weight"].double(), "2.bias": sd["2.bias"].half()}, path)
    warned = [w for w in _accepted(path, config)["warnings"] if "converted" in w]
    assert len(warned) == 1, warned
    for needle in ("float16 to float32 for 2 tensor(s): 0.weight, 2.bias",
                   "bfloat16 to float32 for 1 tensor(s): 0.bias",
                   "float64 to float32 for 1 tensor(s): 2.weight"):
        assert needle in warned[0], warned[0]


def test_a_float64_checkpoint_analysed_in_float64_keeps_every_digit(tmp_path, sd, config):
    exact = {k: v.double() + 1e-12 for k, v in sd.items()}  # not representable in float32
    path = tmp_path / "f64.pt"
    torch.save(exact, path)
    cfg = load_config(config, ["dtype=float64"])
    model = build_model(cfg)
    load_weights(model, Checkpoint(path=path, format="state_dict", tensors=exact), cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in exact.items())
    assert not [w for w in _accepted(path, config, "--dtype", "float64")["warnings"]
                if "converted" in w]


def test_integer_buffers_take_integers_only():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).state_dict()
    assert model["1.num_batches_tracked"].dtype == torch.int64
    match = match_state_dict({**model, "1.num_batches_tracked": torch.tensor(7, dtype=torch.int32)},
                             model)
    assert match.converted == [("1.num_batches_tracked", torch.int32, torch.int64)]
    assert match_state_dict(model, model).converted == []
    with pytest.raises(CheckpointError, match=r"'1\.num_batches_tracked': checkpoint has "
                                               r"torch\.float32, the model expects torch\.int64"):
        match_state_dict({**model, "1.num_batches_tracked": torch.tensor(7.0)}, model)


# ----------------------------------------------------------------------------- 5. forbidden globals


class _Pwn:
    """Unpickling this runs ``touch MARKER`` (os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forbidden_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that call ``os.system('touch MARKER')``, and the global each one names."""
    cmd = f"touch {marker}".encode()
    text = b"S'" + cmd + b"'\n"  # protocol 0 string
    short = b"\x8c" + bytes([len(cmd)]) + cmd  # SHORT_BINUNICODE
    forms = {f"protocol_{p}": (pickle.dumps(_Pwn(marker), protocol=p), "posix.system")
             for p in range(6)}
    forms.update({
        "inst": (b"(" + text + b"ios\nsystem\n.", "os.system"),
        "obj": (b"(cos\nsystem\n" + text + b"o.", "os.system"),
        "global_put_get": (b"cos\nsystem\np0\n0g0\n(" + text + b"tR.", "os.system"),
        "global_binput_binget": (b"\x80\x02cos\nsystem\nq\x010h\x01" + short + b"\x85R.",
                                 "os.system"),
        "stack_global_memoize": (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94" + b"00h\x00h\x01\x93"
                                 + short + b"\x85R.", "os.system"),
        "stack_global_after_pop": (b"\x80\x04\x8c\x02os\x8c\x06system\x8c\x04junk0\x93" + short
                                   + b"\x85R.", "os.system"),
        "obj_stack_global": (b"\x80\x04(\x8c\x02os\x8c\x06system\x93" + short + b"o.", "os.system"),
        "inside_a_state_dict": (b"\x80\x02}X\x01\x00\x00\x00acposix\nsystem\n" + short
                                + b"\x85Rs.", "posix.system"),
    })
    return forms


CONTAINERS = ["legacy", "zip"]
FORMS = list(_forbidden_pickles(Path("m")))


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("form", FORMS)
def test_forbidden_global_in_any_opcode_form(tmp_path, config, form, container):
    marker = tmp_path / "pwned"
    payload, name = _forbidden_pickles(marker)[form]
    path = tmp_path / f"{form}.pt"
    if container == "zip":
        _torch_zip(path, payload)
    else:
        path.write_bytes(payload)
    _refused(path, config, [f"refused to unpickle {name} ", *SAFETY])
    ran = invoke(["inspect", path, "--json"])
    assert ran.returncode == 0, ran.detail()
    results = json.loads(ran.stdout)["results"]
    assert results["unsafe_globals"] == [name] and results["loadable"] is False
    assert not marker.exists(), "a pickled command ran"


def test_the_payloads_do_run_when_trusted(tmp_path):
    """Proof that the forms above are live: a plain unpickler runs every one of them."""
    marker = tmp_path / "pwned"
    for form, (payload, _) in _forbidden_pickles(marker).items():
        if form == "inside_a_state_dict":
            continue  # the same payload as protocol_2, inside a dict
        pickle.loads(payload)
        assert marker.exists(), form
        marker.unlink()


def test_forbidden_global_then_truncation_is_still_named(tmp_path, config):
    payload, name = _forbidden_pickles(tmp_path / "pwned")["protocol_2"]
    path = tmp_path / "cut.pt"
    path.write_bytes(payload[:-5])
    _refused(path, config, [name, *SAFETY])


def test_unsafe_shard_of_a_folder_is_listed_by_inspect(tmp_path, sd):
    folder = tmp_path / "hf_bin"
    folder.mkdir()
    torch.save({"state_dict": sd, "x": _Pwn(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    ran = invoke(["inspect", folder, "--json"])
    assert ran.returncode == 0, ran.detail()
    assert json.loads(ran.stdout)["results"]["unsafe_globals"] == ["posix.system"]
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- 6. non-finite


@pytest.mark.parametrize("where, value, word", [
    ("2.weight", float("nan"), "nan"), ("0.bias", float("inf"), "inf"),
    ("0.weight", float("-inf"), "inf")])
def test_non_finite_weight_is_named(tmp_path, sd, config, where, value, word):
    bad = {k: v.clone() for k, v in sd.items()}
    bad[where].view(-1)[3] = value
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    _refused(path, config, [f"weight '{where}'", f"non-finite values ({word})", "not finite"])


def test_first_non_finite_weight_and_every_kind(tmp_path, sd, config):
    bad = {k: v.clone() for k, v in sd.items()}
    bad["0.bias"][0], bad["0.bias"][1] = float("nan"), float("inf")
    bad["2.weight"][0, 0] = float("nan")
    path = tmp_path / "module.pt"
    torch.save({"module." + k: v for k, v in bad.items()}, path)
    _refused(path, config, ["weight '0.bias'", "(nan, inf)"])


def test_overflow_on_conversion_is_named(tmp_path, sd, config):
    big = {k: v.double() for k, v in sd.items()}
    big["2.bias"][0] = 1e300
    path = tmp_path / "big.pt"
    torch.save(big, path)
    _refused(path, config, ["weight '2.bias'", "(inf)", "converted from torch.float64 to "
                                                       "torch.float32"])
    assert _accepted(path, config, "--dtype", "float64")["status"] == "ok"


# ----------------------------------------------------------------------------- 7. one line


def test_untrusted_names_cannot_break_the_line(tmp_path, sd, config):
    key = "0.weight\nerror: forged\x1b[31m"
    path = tmp_path / "newline_key.pt"
    torch.save({**sd, key: torch.ones(1)}, path)
    line = _refused(path, config, ["\\n", "\\x1b"])
    assert "\x1b" not in line

    path = tmp_path / "top_level.pt"
    torch.save({"a\nb": 1}, path)
    _refused(path, config, ["no state dict", "a\\nb"])

    payload = b"\x80\x04\x8c\x03o\ns\x8c\x06system\x93)R."
    path = _torch_zip(tmp_path / "newline_global.pt", payload)
    _refused(path, config, ["o\\ns.system", *SAFETY])

    folder = _sharded(tmp_path / "hf", sd, {"0.weight": "../x\n.safetensors"})
    assert_one_error(_spectrum(folder, config), ["../x\\n.safetensors", "outside"])


def test_file_name_with_a_newline(tmp_path, config):
    path = tmp_path / "two\nlines.pt"
    path.write_bytes(SAMPLE.read_bytes()[:100])
    assert_one_error(_spectrum(path, config), ["two\\nlines.pt", CORRUPT])


# ----------------------------------------------------------------------------- and more


def test_metadata_cannot_overwrite_report_fields(tmp_path, sd, config):
    path = tmp_path / "meta.safetensors"
    save_file(sd, path, metadata={"n_params": "lots", "sha256": "forged", "format": "x",
                                  "epoch": "4"})
    ckpt = _accepted(path, config)["checkpoint"]
    assert ckpt["n_params"] == 2410 and ckpt["sha256"] != "forged"
    assert ckpt["format"] == "safetensors" and ckpt["epoch"] == "4"
    path = tmp_path / "nan_epoch.pt"
    torch.save({"state_dict": sd, "epoch": float("nan"), "global_step": 5}, path)
    ckpt = _accepted(path, config)["checkpoint"]
    assert "epoch" not in ckpt and ckpt["global_step"] == 5


def test_torch_warnings_stay_off_stderr(tmp_path, sd, config):
    """A protocol-3 pickle loads, and torch's warning about it does not reach stderr (a real
    process: pytest would capture the warning in-process)."""
    path = tmp_path / "protocol3.pt"
    torch.save(sd, path, pickle_protocol=3)
    ran = run_process(["spectrum", path, "-c", config, *FAST, "--json"])
    assert ran.returncode == 0 and ran.stderr == "", ran.detail()


def test_pickled_module_lists_only_what_weights_only_refuses(tmp_path, config):
    """``torch.save(model)`` writes Python 2 names (``__builtin__.set``) that the unpickler maps
    to allowed ones: only the module classes are refused, and allowing them loads the file."""
    path = tmp_path / "module.pt"
    torch.save(nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)), path)
    classes = ["torch.nn.modules.activation.Tanh", "torch.nn.modules.container.Sequential",
               "torch.nn.modules.linear.Linear"]
    _refused(path, config, [", ".join(classes) + " (weights_only=True)", *SAFETY])
    ran = invoke(["inspect", path, "--json"])
    assert json.loads(ran.stdout)["results"]["unsafe_globals"] == classes
    allowed = [arg for name in classes for arg in ("--allow-global", name)]
    assert _accepted(path, config, *allowed)["checkpoint"]["format"] == "pickled_module"


def test_torchscript_archive_is_named_as_such(tmp_path, config):
    path = tmp_path / "scripted.pt"
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    _quiet(lambda: torch.jit.save(torch.jit.script(model), path))  # deprecated, still around
    _refused(path, config, [CORRUPT, "TorchScript"])
    assert _accepted(path, config, "--trust-checkpoint")["status"] == "ok"
