"""Property tests: ``--set`` overrides and ``deep_merge`` (config.py), and prefix detection
when checkpoint keys are matched to a model's (loading/matching.py)."""

from __future__ import annotations

import copy
import json
import keyword
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from landscape_cli.config import apply_override, deep_merge, load_config, parse_override
from landscape_cli.config import safe_load as config_safe_load
from landscape_cli.errors import CheckpointError, ConfigError
from landscape_cli.loading.matching import WRAPPER_PARTS, match_state_dict

FAST = settings(max_examples=100, deadline=None)

# ----------------------------------------------------------------------------- strategies

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
# YAML 1.1 reads these plain words as booleans / null: not usable as unquoted string values.
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=12),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
LEAVES = st.one_of(VALUES, st.just({}))


TREES = st.dictionaries(NAME, st.recursive(
    LEAVES, lambda inner: st.dictionaries(NAME, inner, max_size=4), max_leaves=10), max_size=5)
PATHS = st.lists(NAME, min_size=1, max_size=4)


def flatten(tree, prefix=()):
    """{path tuple: leaf}; an empty mapping is a leaf of its own."""
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, (*prefix, key)))
        return out
    return {prefix: tree}


def get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def blocked(tree, path) -> bool:
    """Would setting ``path`` have to go through a value that is not a mapping (nor null)?"""
    node = tree
    for part in path[:-1]:
        if not isinstance(node, dict):
            return True
        node = node.get(part)
        if node is None:
            return False
    return not isinstance(node, dict)


def same(a, b) -> bool:
    """Equality that tells 1 from 1.0 and True from 1 (and -0.0 from 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# ----------------------------------------------------------------------------- apply_override


@FAST
@given(TREES, PATHS, VALUES)
def test_apply_override_sets_exactly_that_path(tree, path, value):
    before = copy.deepcopy(tree)
    if blocked(tree, path):
        with pytest.raises(ConfigError):
            apply_override(tree, path, value)
        assert tree == before
        return
    out = apply_override(tree, path, value)
    assert tree == before, "the input was mutated"
    assert same(get(out, path), value)
    n = len(path)
    # Every other leaf is unchanged; the only ones gone are under `path` or on the way to it
    # (a null or an empty mapping that became the intermediate mapping).
    kept = {p: v for p, v in flatten(tree).items() if p[:n] != tuple(path) and p != tuple(path[:len(p)])}
    rest = {p: v for p, v in flatten(out).items() if p[:n] != tuple(path)}
    assert rest.keys() == kept.keys()
    assert all(same(rest[p], kept[p]) for p in kept)


def test_apply_override_examples():
    tree = {"data": {"batch_size": 256, "kwargs": {"split": "train"}}, "seed": 0, "data2": None}
    assert apply_override(tree, ["data", "batch_size"], 64)["data"] == {
        "batch_size": 64, "kwargs": {"split": "train"}}
    assert apply_override(tree, ["model", "kwargs", "depth"], 20)["model"] == {"kwargs": {"depth": 20}}
    assert apply_override(tree, ["data2", "x"], 1)["data2"] == {"x": 1}
    with pytest.raises(ConfigError, match="seed"):
        apply_override(tree, ["seed", "x"], 1)
    assert tree["data"]["batch_size"] == 256 and "model" not in tree


def test_apply_override_does_not_leak_through_yaml_aliases(tmp_path):
    """A YAML alias makes one mapping appear twice; --set changes only the place it names."""
    text = ("model:\n  factory: m:f\n  kwargs: &kw {hidden: 32, act: {name: tanh}}\n"
            "data:\n  path: x.npz\n  kwargs: *kw\n")
    tree = config_safe_load(text)
    assert tree["model"]["kwargs"] is tree["data"]["kwargs"]
    out = apply_override(tree, ["model", "kwargs", "hidden"], 16)
    out = apply_override(out, ["model", "kwargs", "act", "name"], "relu")
    assert out["model"]["kwargs"] == {"hidden": 16, "act": {"name": "relu"}}
    assert out["data"]["kwargs"] == {"hidden": 32, "act": {"name": "tanh"}}
    assert tree["model"]["kwargs"] == {"hidden": 32, "act": {"name": "tanh"}}
    # The same through the real loader, from a file and --set.
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml", ["model.kwargs.hidden=16"])
    assert config.model.kwargs["hidden"] == 16 and config.data.kwargs["hidden"] == 32


# ----------------------------------------------------------------------------- parse_override


def _as_cli_text(value) -> str:
    """How a user would write ``value`` after ``=``: JSON flow (a YAML subset), Python's float
    repr (``1e-05``) included."""
    return json.dumps(value, ensure_ascii=True)


@FAST
@given(PATHS, VALUES)
def test_parse_override_round_trips(path, value):
    text = ".".join(path) + "=" + _as_cli_text(value)
    keys, parsed = parse_override(text)
    assert keys == path
    assert same(parsed, value), (text, parsed)


@FAST
@given(PATHS, st.floats(allow_nan=False, allow_infinity=False))
def test_parse_override_floats_as_typed(path, number):
    """``--set a.b=1e-05`` is a float, written however Python prints it."""
    _, parsed = parse_override(".".join(path) + "=" + repr(number))
    assert isinstance(parsed, float) and same(parsed, number)


@FAST
@given(PATHS, NAME.filter(lambda s: s.lower() not in YAML_WORDS and not s[0].isdigit()))
def test_parse_override_plain_words_are_strings(path, word):
    keys, parsed = parse_override(f" {'.'.join(path)} = {word}")
    assert keys == path and parsed == word


@pytest.mark.parametrize("text, want", [
    ("a.b=3", 3), ("a.b=-3", -3), ("a=0.5", 0.5), ("a=1e-3", 1e-3), ("a=1E+16", 1e16),
    ("a=true", True), ("a=False", False), ("a=null", None), ("a=~", None), ("a=", ""),
    ("a=cpu", "cpu"), ("a='3'", "3"), ('a="true"', "true"), ("a=[1, 2.5, x]", [1, 2.5, "x"]),
    ("a={k: 1}", {"k": 1}), ("a=cuda:1", "cuda:1"), ("a=x=y", "x=y"),
])
def test_parse_override_examples(text, want):
    assert same(parse_override(text)[1], want)


@pytest.mark.parametrize("text", ["=3", "a..b=1", "a", ".a=1", "a.=1", " =1", "a. .b=2", "",
                                  "a=[1, 2"])
def test_parse_override_rejects_bad_forms(text):
    with pytest.raises(ConfigError):
        parse_override(text)


@FAST
@given(PATHS, st.integers(min_value=0, max_value=4), st.integers())
def test_parse_override_empty_component_is_an_error(path, where, number):
    parts = list(path)
    parts.insert(min(where, len(parts)), "")
    with pytest.raises(ConfigError):
        parse_override(".".join(parts) + f"={number}")
    with pytest.raises(ConfigError):
        parse_override(".".join(path))  # no '='


# ----------------------------------------------------------------------------- deep_merge


def _touched(q: tuple, flat_top: dict) -> bool:
    """Does merging ``top`` change what ``base`` holds at leaf path ``q``?  A path of ``top``
    at or below ``q`` replaces it; one above it replaces it unless it is an empty mapping
    (merged into the mapping that holds ``q``, it changes nothing)."""
    for p, value in flat_top.items():
        if p[:len(q)] == q:
            return True
        if q[:len(p)] == p and value != {}:
            return True
    return False


@FAST
@given(TREES, TREES)
def test_deep_merge(base, top):
    before = copy.deepcopy((base, top))
    out = deep_merge(base, top)
    assert (base, top) == before, "an input was mutated"
    flat_out, flat_top, flat_base = flatten(out), flatten(top), flatten(base)
    # Everything `top` says is in the result ...
    for path, value in flat_top.items():
        if value == {}:  # an empty mapping merged into a mapping leaves that mapping
            assert isinstance(get(out, path), dict)
        else:
            assert same(flat_out[path], value)
    # ... with everything in `base` that `top` does not replace, and nothing else.
    for path, value in flat_base.items():
        if not _touched(path, flat_top):
            assert same(flat_out[path], value)
    assert flat_out.keys() <= flat_top.keys() | flat_base.keys()
    assert deep_merge(base, {}) == base
    assert deep_merge({}, top) == top
    assert deep_merge(out, top) == out  # applying the same overrides twice changes nothing
    assert deep_merge(base, base) == base


def test_deep_merge_example():
    base = {"model": {"factory": "m:f", "kwargs": {"depth": 20, "width": 4}}, "seed": 0}
    top = {"model": {"kwargs": {"depth": 32}}, "seed": {"x": 1}}
    assert deep_merge(base, top) == {
        "model": {"factory": "m:f", "kwargs": {"depth": 32, "width": 4}}, "seed": {"x": 1}}


# ----------------------------------------------------------------------------- prefixes

IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in WRAPPER_PARTS and not keyword.iskeyword(s))
DIGITS = st.integers(min_value=0, max_value=12).map(str)
PART = st.one_of(IDENT, DIGITS)
MODEL_KEYS = st.lists(
    st.lists(PART, min_size=0, max_size=3).flatmap(
        lambda parents: st.sampled_from(["weight", "bias", "running_mean", "scale"]).map(
            lambda leaf: ".".join([*parents, leaf]))),
    min_size=1, max_size=12, unique=True)
PREFIXES = st.one_of(st.sampled_from(["module.", "_orig_mod.", "module._orig_mod.", "model.", "net."]),
                     IDENT.map(lambda s: s + "."))


def _model_state(keys):
    return {k: torch.zeros(i + 1) for i, k in enumerate(keys)}


def _checkpoint(keys, rename):
    """Distinct values per key (the model key's index), stored under renamed keys."""
    return {rename(k): torch.full((i + 1,), float(i)) for i, k in enumerate(keys)}


def _assert_maps_back(match, keys):
    assert sorted(match.tensors) == sorted(keys)
    for i, k in enumerate(keys):
        assert torch.equal(match.tensors[k], torch.full((i + 1,), float(i))), k
    assert match.missing == [] and match.unexpected == [] and match.mismatched == []


@FAST
@given(MODEL_KEYS, PREFIXES)
def test_prefixed_keys_map_back_to_the_model(keys, prefix):
    match = match_state_dict(_checkpoint(keys, lambda k: prefix + k), _model_state(keys))
    _assert_maps_back(match, keys)
    assert match.ignored == []
    parts = prefix.rstrip(".").split(".")
    wrappers = [p for p in parts if p in WRAPPER_PARTS]
    # What was stripped, in the order it appeared: wrappers, then a remaining attribute prefix.
    assert match.wrappers == wrappers
    rest = [p for p in parts if p not in WRAPPER_PARTS]
    assert match.prefix == ("".join(p + "." for p in rest))


@FAST
@given(MODEL_KEYS)
def test_unprefixed_keys_are_left_alone(keys):
    match = match_state_dict(_checkpoint(keys, lambda k: k), _model_state(keys))
    _assert_maps_back(match, keys)
    assert match.prefix == "" and match.wrappers == [] and match.stripped == ""


@FAST
@given(MODEL_KEYS, st.data())
def test_fsdp_infixes_are_removed_at_any_depth(keys, data):
    def wrap(key: str) -> str:
        parts = key.split(".")
        at = data.draw(st.integers(min_value=0, max_value=len(parts) - 1), label=f"depth of {key}")
        times = data.draw(st.integers(min_value=0, max_value=2), label="how many")
        return ".".join([*parts[:at], *["_fsdp_wrapped_module"] * times, *parts[at:]])

    ckpt = _checkpoint(keys, wrap)
    match = match_state_dict(ckpt, _model_state(keys))
    _assert_maps_back(match, keys)
    assert match.prefix == ""
    wrapped = any("_fsdp_wrapped_module" in k for k in ckpt)
    assert match.wrappers == (["_fsdp_wrapped_module"] if wrapped else [])


@FAST
@given(MODEL_KEYS, st.sampled_from(["", "module.", "_orig_mod.", "module._orig_mod."]))
def test_a_submodule_named_module_is_kept(keys, prefix):
    """A model whose own submodule is called `module` keeps it; a DDP `module.` on top goes."""
    keys = ["module." + k for k in keys[: len(keys) // 2]] + keys[len(keys) // 2:]
    assume(len(set(keys)) == len(keys))
    match = match_state_dict(_checkpoint(keys, lambda k: prefix + k), _model_state(keys))
    _assert_maps_back(match, keys)


@FAST
@given(MODEL_KEYS, PREFIXES, st.lists(IDENT, min_size=1, max_size=3, unique=True))
def test_keys_outside_the_prefix_are_ignored(keys, prefix, extras):
    """A Lightning module's other attributes (``criterion.weight``) are not the model's."""
    assume(not prefix.startswith("module") and not prefix.startswith("_orig_mod"))
    ckpt = _checkpoint(keys, lambda k: prefix + k)
    # Leaf names no model key has, so that no choice of prefix could make them fit.
    others = {f"{e}.criterion_w": torch.ones(1) for e in extras}
    assume(all(not k.startswith(prefix) for k in others))
    match = match_state_dict({**ckpt, **others}, _model_state(keys))
    _assert_maps_back(match, keys)
    assert match.ignored == sorted(others)


def test_shape_mismatch_names_the_key():
    model = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    ckpt = {"module.a.weight": torch.zeros(4, 2), "module.a.bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"'a\.weight': \[4, 2\] in the checkpoint, \[3, 2\]"):
        match_state_dict(ckpt, model)


def test_missing_and_unexpected_keys_are_listed():
    model = {"a.weight": torch.zeros(1), "b.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"missing.*b\.weight"):
        match_state_dict({"a.weight": torch.zeros(1)}, model)
    with pytest.raises(CheckpointError, match=r"does not have.*c\.weight"):
        match_state_dict({**model, "c.weight": torch.zeros(1)}, model)
    match = match_state_dict({**model, "c.weight": torch.zeros(1)}, model, strict=False)
    assert match.unexpected == ["c.weight"] and sorted(match.tensors) == sorted(model)
