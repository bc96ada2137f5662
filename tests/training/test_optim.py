"""Learning-rate schedules against their closed forms, and their use as LambdaLR factors."""

from __future__ import annotations

import math

import pytest
import torch

from ir_lightning.training.optim import Constant, CosineRestarts, MultiStep, StepDecay, lr_factor


def test_step_decay_and_multistep():
    decay = StepDecay(every=60, gamma=0.1, start=100)
    assert [decay(s, 2e-4) for s in (0, 159, 160, 220)] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-6])
    multi = MultiStep([500, 700], gamma=0.5)
    assert [multi(s, 1.0) for s in (499, 500, 699, 700, 10_000)] == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_restarts_closed_form():
    schedule = CosineRestarts(periods=[92, 208], eta_mins=[2.85e-4, 1e-6])
    base = 2e-4
    assert schedule(0, base) == pytest.approx(base)
    assert schedule(46, base) == pytest.approx(2.85e-4 + (base - 2.85e-4) * 0.5)  # half-way through cycle 1
    assert schedule(92, base) == pytest.approx(base)  # restart
    assert schedule(92 + 104, base) == pytest.approx(1e-6 + (base - 1e-6) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule(300, base) == pytest.approx(1e-6) == schedule(10_000, base)


def test_lr_factor_drives_lambdalr_with_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(StepDecay(every=3, gamma=0.5), 0.5, warmup_steps=2)
    )
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # a function: nothing of ours in the checkpoint
    assert lr_factor(Constant(), 0.5)(100) == 1.0


def test_bad_schedules_name_the_argument():
    with pytest.raises(ValueError, match="every"):
        StepDecay(every=0)
    with pytest.raises(ValueError, match="one entry per cycle"):
        CosineRestarts(periods=[1, 2], eta_mins=[0.0])
    with pytest.raises(ValueError, match="increasing"):
        MultiStep([5, 3])
