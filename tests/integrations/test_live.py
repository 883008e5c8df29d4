"""The framework-free live analysis (issue 30 §1): the three ways to give the loss agree, and
the model, its modes and the RNG are as they were."""

from __future__ import annotations

import random

import numpy
import torch
from helpers.live_training import make_net, probe_loader
from torch import nn

from landscape_cli.integrations.live import LiveAnalysis, scalars


def test_a_criterion_a_functional_loss_and_a_fn_agree_and_nothing_moves():
    net = make_net().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    random.seed(5)
    numpy.random.seed(5)
    before = (torch.get_rng_state(), random.getstate(), numpy.random.get_state()[1].copy())

    def fn(model, batch):
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    values = []
    for loss in (nn.MSELoss(), nn.functional.mse_loss, fn):
        analysis = LiveAnalysis("spectrum", probe=probe_loader(), loss=loss, options={"top": 1})
        report = analysis.measure(net, step=7, default_loss=None)
        values.append(scalars(report)["landscape/lambda_max"])
        assert report.checkpoint["global_step"] == 7 and report.checkpoint["sha256"] is None
    assert values[0] == values[1] == values[2] > 0
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (numpy.random.get_state()[1] == before[2]).all()
