"""Reading the optimizer state a checkpoint holds (issue 29): every place training code puts
it gives the same numbers, ``inspect`` lists it, and every hostile state is one line, exit 2."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.adversarial import assert_one_error
from helpers.optimizer_states import (
    make_model,
    save_dict,
    save_lightning,
    save_trainer_folder,
    trained,
    write_config,
)
from helpers.runners import invoke

from landscape_cli.errors import CheckpointError

MEASURES = ("--measures", "stability_ratio,update_curvature")


def ratio(checkpoint, folder, *extra) -> dict:
    ran = invoke(["sharpness", checkpoint, "-c", write_config(folder), *MEASURES, "--json", *extra])
    assert ran.returncode == 0, ran.detail()
    return json.loads(ran.stdout)["results"]["measures"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Adam over model.parameters(), saved as a training loop's dict under 'optimizer'."""
    folder = tmp_path_factory.mktemp("reference")
    return ratio(save_dict(folder / "adam.pt"), folder)


@pytest.mark.parametrize("key", ["optimizer", "optimizer_state_dict", "optim"])
def test_a_training_loop_dict_under_each_key(tmp_path, reference, key):
    found = ratio(save_dict(tmp_path / "ckpt.pt", key=key), tmp_path)
    for name in ("stability_ratio", "update_curvature"):
        assert found[name]["value"] == pytest.approx(reference[name]["value"], rel=1e-12)
    assert found["stability_ratio"]["optimizer"] == "Adam"


def test_lightning_and_a_separate_file_and_param_names_agree(tmp_path, reference):
    lightning = ratio(save_lightning(tmp_path / "lightning.ckpt"), tmp_path)
    named = ratio(save_dict(tmp_path / "named.pt", named=True), tmp_path)
    model, opt = trained()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    separate = ratio(tmp_path / "weights.pt", tmp_path, "--optimizer", tmp_path / "optimizer.pt")
    for found in (lightning, named, separate):
        assert found["stability_ratio"]["value"] == pytest.approx(reference["stability_ratio"]["value"],
                                                                  rel=1e-12)


def test_a_trainer_folder_with_and_without_param_names(tmp_path):
    grouped = ratio(save_trainer_folder(tmp_path / "checkpoint-3"), tmp_path)
    named = ratio(save_trainer_folder(tmp_path / "named" / "checkpoint-3", named=True), tmp_path)
    assert grouped["stability_ratio"]["optimizer"] == "AdamW"
    # the same model, data and steps: only the decayed parameters differ (all vs. weights)
    assert grouped["stability_ratio"]["value"] > 0 and named["stability_ratio"]["value"] > 0
    assert grouped["stability_ratio"]["step"] == named["stability_ratio"]["step"] == 3


def test_batch_sharpness_says_when_the_batches_are_not_the_trainers(tmp_path):
    folder = save_trainer_folder(tmp_path / "checkpoint-3")
    args = ["sharpness", folder, "-c", write_config(tmp_path), "--measures", "batch_sharpness", "--json"]
    same = json.loads(invoke(args).stdout)
    assert same["results"]["measures"]["batch_sharpness"]["batch_size"] == 16
    assert same["results"]["measures"]["batch_sharpness"]["threshold"] == pytest.approx(2 / 0.01)
    assert not any("batch_sharpness" in w for w in same["warnings"])
    other = json.loads(invoke([*args, "--set", "data.batch_size=48"]).stdout)
    assert any("training took minibatches of 16" in w and "data.batch_size: 16" in w
               for w in other["warnings"])


def test_the_trainer_order_is_found_by_shapes(tmp_path):
    """Without names, the Trainer's order (weights, then biases and the norm) is the one that fits
    every shape; mapped through it, the state gives what mapping by name gives."""
    from landscape_cli.loading.matching import Match
    from landscape_cli.loading.optimizer_params import map_optimizer_state
    from landscape_cli.loading.optimizer_state import read_optimizer_state

    folder = save_trainer_folder(tmp_path / "checkpoint-3")
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    state = map_optimizer_state(read_optimizer_state(folder), model, Match({}, ""), names)
    assert state.order == "Trainer's decay/no-decay groups"
    assert [state.entries[n][0] for n in names] == [0, 1, 1, 1, 0, 1]
    assert state.training == {"global_step": 3, "train_batch_size": 16, "scheduler_last_lr": [0.01, 0.01]}


def test_inspect_lists_the_optimizer_state(tmp_path):
    ran = invoke(["inspect", save_lightning(tmp_path / "l.ckpt", optimizer="sgd", momentum=0.9), "--json"])
    assert ran.returncode == 0, ran.detail()
    found = json.loads(ran.stdout)["results"]["optimizer"]
    assert found["type"] == "SGD" and found["n_states"] == 6
    assert found["param_groups"][0]["momentum"] == 0.9 and found["param_groups"][0]["n_tensors"] == 6
    bare = json.loads(invoke(["inspect", tmp_path / "l.ckpt", "--json"]).stdout)
    assert bare["results"]["optimizer"]["source"].endswith("['optimizer_states.0']")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_no_optimizer_state_makes_the_measures_null_with_the_reason(tmp_path, suffix):
    from safetensors.torch import save_file

    path = tmp_path / f"bare{suffix}"
    if suffix == ".pt":
        torch.save(make_model().state_dict(), path)
    else:
        save_file(make_model().state_dict(), str(path))
    found = ratio(path, tmp_path)
    assert found["stability_ratio"]["value"] is None
    assert "holds no optimizer state" in found["stability_ratio"]["reason"]
    _, opt = trained()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    given = ratio(path, tmp_path, "--optimizer", tmp_path / "optimizer.pt")
    assert given["stability_ratio"]["value"] > 0


def test_an_unsupported_optimizer_is_null_by_default_and_refused_by_name(tmp_path):
    path = save_dict(tmp_path / "rms.pt", optimizer="rmsprop")
    ran = invoke(["sharpness", path, "-c", write_config(tmp_path), "--measures", "all", "--json",
                  "--samples", "4", "--steps", "1", "--max-hvps", "8"])
    assert ran.returncode == 0, ran.detail()
    assert "RMSprop" in json.loads(ran.stdout)["results"]["measures"]["stability_ratio"]["reason"]
    assert_one_error(invoke(["sharpness", path, "-c", write_config(tmp_path), *MEASURES]),
                     ["RMSprop", "SGD and Adam/AdamW"])


# ----------------------------------------------------------------------------- hostile states


def _edited(tmp_path, edit, **training):
    """A dict checkpoint whose optimizer state ``edit(state_dict)`` spoiled."""
    model, opt = trained(**training)
    state = opt.state_dict()
    edit(state)
    path = tmp_path / "spoiled.pt"
    torch.save({"model": model.state_dict(), "optimizer": state}, path)
    return path


def _set(entry: int, key: str, value: float):
    def edit(state):
        state["state"][entry][key][0] = value
    return edit


def _drop_first(state):
    """The first parameter frozen in training: absent from the groups and the state."""
    del state["state"][0]
    state["param_groups"][0]["params"] = state["param_groups"][0]["params"][1:]


def _transpose(state):
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"].T.contiguous()


@pytest.mark.parametrize(("edit", "needles"), [
    (_set(0, "exp_avg_sq", -1.0), ["'0.weight'", "negative second moments", "--optimizer"]),
    (_set(2, "exp_avg_sq", math.nan), ["'1.weight'", "non-finite", "--optimizer"]),
    (_set(3, "exp_avg", math.inf), ["'1.bias'", "non-finite"]),
    (_drop_first, ["5 parameters are not the model's 6", "optimizer.param_order"]),
    (_transpose, ["state entry 0", "'0.weight'", "optimizer.param_order", "--optimizer"]),
    (lambda s: s["param_groups"][0].update(betas=(1.5, 0.9)), ["betas", "[0, 1)"]),
    (lambda s: s["param_groups"][0].update(lr=-1.0), ["'lr'", "≥ 0"]),
    (lambda s: s["param_groups"][0].update(params=[0, 0, 1, 2, 3, 4]), ["twice"]),
    (lambda s: s["state"].update({9: {}}), ["state entry 9", "no parameter group"]),
    (lambda s: s.pop("param_groups"), ["not an optimizer state dict"]),
    (lambda s: s["param_groups"][0].update(maximize=True), ["maximizes"]),
])
def test_hostile_states_are_one_line(tmp_path, edit, needles):
    path = _edited(tmp_path, edit)
    assert_one_error(invoke(["sharpness", path, "-c", write_config(tmp_path), *MEASURES]), needles)


def test_two_orders_that_fit_differently_are_ambiguous(tmp_path):
    """Trainer groups whose sizes both orders fit (a model of equal shapes) are refused."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.LayerNorm(4, bias=False),
                                torch.nn.Linear(4, 4, bias=False)).double()
    from landscape_cli.loading.matching import Match
    from landscape_cli.loading.optimizer_params import map_optimizer_state
    from landscape_cli.loading.optimizer_state import read_optimizer_state

    opt = torch.optim.SGD([{"params": [model[0].weight, model[2].weight]},
                           {"params": [model[1].weight], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    model[0].weight.grad = model[1].weight.grad = model[2].weight.grad = None
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "o.pt")
    raw = read_optimizer_state(tmp_path / "o.pt")
    # [4, 4], [4, 4], [4]: model.parameters() order is [4, 4], [4], [4, 4]; no state to check
    # shapes by (SGD before its first step), so both fit and differ
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(CheckpointError, match=r"fit model.parameters\(\) and Trainer's decay/no-decay"):
        map_optimizer_state(raw, model, Match({}, ""), names)
    chosen = map_optimizer_state(raw, model, Match({}, ""), names, param_order="trainer")
    assert [chosen.entries[n][0] for n in names] == [0, 1, 0]


def test_a_pickle_beyond_weights_only_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    model = make_model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save({"state": {}, "param_groups": [{"params": [0], "lr": Evil()}]}, tmp_path / "evil.pt")
    assert_one_error(invoke(["sharpness", tmp_path / "w.pt", "-c", write_config(tmp_path), *MEASURES,
                             "--optimizer", tmp_path / "evil.pt"]), ["evil.pt", "refused", "builtins.print"])
    assert_one_error(invoke(["sharpness", tmp_path / "w.pt", "-c", write_config(tmp_path), *MEASURES,
                             "--optimizer", tmp_path / "missing.pt"]), ["missing.pt", "--optimizer"])


def test_a_trainer_scheduler_beyond_weights_only_is_left_out(tmp_path):
    """scheduler.pt only confirms the learning rates: a pickle weights_only refuses there does
    not stop the analysis (and is never run)."""
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    folder = save_trainer_folder(tmp_path / "checkpoint-3")
    torch.save({"_last_lr": Evil()}, folder / "scheduler.pt")
    found = ratio(folder, tmp_path)
    assert found["stability_ratio"]["value"] > 0
