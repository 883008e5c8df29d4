"""Tied weights (issue 18): a key that is one tensor with another the checkpoint holds is not
missing, even under ``strict``; it takes its partner's tensor, so loading sets the shared weight
whichever key the file kept (``save_pretrained`` keeps one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape_cli.errors import CheckpointError
from landscape_cli.loading.matching import match_state_dict, tied_groups

EMBED, HEAD = "embed.weight", "head.weight"


class TiedLM(nn.Module):
    """An embedding whose matrix is also the output layer's weight (as in GPT-2)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight


def _trained() -> dict[str, torch.Tensor]:
    """A full state dict of TiedLM with values no fresh TiedLM holds."""
    torch.manual_seed(1)
    state = TiedLM().state_dict()
    shared = torch.randn(7, 4)
    return {**{k: torch.randn_like(v) for k, v in state.items()}, EMBED: shared, HEAD: shared}


def test_tied_groups_by_identity():
    assert tied_groups(TiedLM()) == [(EMBED, HEAD)]
    assert tied_groups(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))) == []
    # Equal values do not make a tie: only the same object does.
    twins = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    twins[1].load_state_dict(twins[0].state_dict())
    assert tied_groups(twins) == []


@pytest.mark.parametrize("kept, dropped", [(EMBED, HEAD), (HEAD, EMBED)])
def test_one_key_of_a_tie_loads_strictly(kept, dropped):
    saved = _trained()
    del saved[dropped]
    model = TiedLM()
    match = match_state_dict(saved, model.state_dict(), "", True, "x", tied=tied_groups(model))
    assert match.missing == []
    assert match.tied == [(dropped, kept)]
    assert match.tensors[dropped] is saved[kept]
    model.load_state_dict(match.tensors, strict=False)
    assert torch.equal(model.embed.weight, saved[kept])
    assert torch.equal(model.body.weight, saved["body.weight"])
    assert model.head.weight is model.embed.weight


def test_without_ties_the_dropped_key_is_missing():
    """What happened before issue 18, and still happens when no groups are given."""
    saved = _trained()
    del saved[HEAD]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: head\.weight"):
        match_state_dict(saved, TiedLM().state_dict(), "", True, "x")
    assert match_state_dict(saved, TiedLM().state_dict(), "", False, "x").missing == [HEAD]


def test_an_untied_missing_key_still_fails():
    saved = _trained()
    del saved[HEAD], saved["body.bias"]
    model = TiedLM()
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: body\.bias$"):
        match_state_dict(saved, model.state_dict(), "", True, "x", tied=tied_groups(model))
    match = match_state_dict(saved, model.state_dict(), "", False, "x", tied=tied_groups(model))
    assert match.missing == ["body.bias"]
    assert match.tied == [(HEAD, EMBED)]


def test_a_tie_with_both_keys_missing_is_missing():
    saved = _trained()
    del saved[HEAD], saved[EMBED]
    model = TiedLM()
    match = match_state_dict(saved, model.state_dict(), "", False, "x", tied=tied_groups(model))
    assert match.missing == [EMBED, HEAD]
    assert match.tied == []


def test_both_keys_of_a_tie_with_equal_values_load():
    """``torch.save(model.state_dict())`` keeps both keys (as views of one storage)."""
    saved = _trained()
    saved[HEAD] = saved[EMBED].clone()
    model = TiedLM()
    match = match_state_dict(saved, model.state_dict(), "", True, "x", tied=tied_groups(model))
    assert match.missing == [] and match.tied == []


def test_equal_nans_in_both_keys_of_a_tie_are_no_conflict():
    """A NaN is left for the non-finite check to name, not reported as a tie conflict."""
    saved = _trained()
    saved[EMBED][0, 0] = float("nan")
    saved[HEAD] = saved[EMBED].clone()
    model = TiedLM()
    assert match_state_dict(saved, model.state_dict(), "", True, "x", tied=tied_groups(model)).tied == []


def test_both_keys_of_a_tie_with_different_values():
    saved = _trained()
    saved[HEAD] = saved[EMBED] + 1
    model = TiedLM()
    with pytest.raises(CheckpointError, match=r"^x: 'embed\.weight' and 'head\.weight' are one tied "
                                              r"tensor .* different values"):
        match_state_dict(saved, model.state_dict(), "", True, "x", tied=tied_groups(model))
    # Non-strict, the first key of the group wins for every key of it.
    match = match_state_dict(saved, model.state_dict(), "", False, "x", tied=tied_groups(model))
    assert match.tied == [(HEAD, EMBED)]
    model.load_state_dict(match.tensors, strict=False)
    assert torch.equal(model.head.weight, saved[EMBED])


def test_ties_after_prefix_and_wrapper_stripping():
    """Groups name model keys, so they apply once ``module.``/``model.`` are removed."""
    saved = {f"model.module.{k}": v for k, v in _trained().items() if k != EMBED}
    model = TiedLM()
    match = match_state_dict(saved, model.state_dict(), "auto", True, "x", tied=tied_groups(model))
    assert match.prefix == "model."
    assert match.tied == [(EMBED, HEAD)]


def test_gpt2_save_pretrained_loads_strictly(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    held = {"lm_head.weight", "transformer.wte.weight"} & saved.keys()
    assert len(held) == 1
    fresh = transformers.GPT2LMHeadModel(config)
    assert ("lm_head.weight", "transformer.wte.weight") in tied_groups(fresh)
    match = match_state_dict(saved, fresh.state_dict(), "", True, "x", tied=tied_groups(fresh))
    assert match.missing == []
    fresh.load_state_dict(match.tensors, strict=False)
    assert torch.equal(fresh.lm_head.weight, saved[held.pop()])


TIED_MODEL = '''
import torch
from torch import nn


class Tied(nn.Module):
    """Digits in, a tied read-out: the decoder's weight is the encoder's (as GPT-2's lm_head)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(64, 10, bias=False)
        self.mix = nn.Linear(10, 10)
        self.decode = nn.Linear(10, 10, bias=False)
        self.decode.weight = self.mix.weight

    def forward(self, x):
        return self.decode(torch.tanh(self.mix(self.encode(x))))
'''


def test_a_checkpoint_saved_with_one_of_two_tied_keys_loads_under_strict(tmp_path):
    """End to end through the CLI (``checkpoint.strict`` is true by default): the file holds
    ``mix.weight`` only, as ``save_pretrained`` keeps one of GPT-2's tied pair; the report names
    the tie, and the numbers equal those of the full state dict."""
    import json
    import sys

    from helpers.runners import invoke
    from helpers.samples import DIGITS_FILE
    from safetensors.torch import save_file

    (tmp_path / "tied_model.py").write_text(TIED_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        from tied_model import Tied
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(3)
    state = Tied().state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k != "decode.weight"},
              str(tmp_path / "one.safetensors"))
    torch.save(state, tmp_path / "both.pt")
    config = tmp_path / "landscape.yaml"
    config.write_text(f"python_path: [{tmp_path}]\nmodel:\n  factory: tied_model:Tied\n"
                      f"data:\n  path: {DIGITS_FILE}\n  max_samples: 100\ndevice: cpu\ndtype: float64\n"
                      "checkpoint:\n  strict: true\n")
    reports = {}
    for name in ("one.safetensors", "both.pt"):
        ran = invoke(["spectrum", tmp_path / name, "-c", config, "--top", "2", "--json"])
        assert ran.returncode == 0, ran.stderr
        reports[name] = json.loads(ran.stdout)
    assert reports["one.safetensors"]["checkpoint"]["tied"] == [["decode.weight", "mix.weight"]]
    assert reports["one.safetensors"]["results"]["top_eigenvalues"] == pytest.approx(
        reports["both.pt"]["results"]["top_eigenvalues"], rel=1e-12)
    assert not reports["one.safetensors"]["warnings"]
