"""The optimizer and learning-rate schedule every stage builds, from the run config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agents.config import DeviceSpec, RunConfig
from agents.errors import AgentError
from agents.stage import make_optimizer


def run(**fields) -> RunConfig:
    return RunConfig(run_id="r", strategy="fl", model="vgg5", dataset="fashion-mnist",
                     devices=(DeviceSpec("d1"),), **fields)


@pytest.mark.parametrize(("schedule", "torch_scheduler"), [
    ({"lr_schedule": "step", "lr_step_rounds": 2, "lr_gamma": 0.3},
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)),
    ({"lr_schedule": "cosine"},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)),
    ({"lr_schedule": "constant"}, lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, 1.0)),
])
def test_the_rate_of_each_round_is_torchs_scheduler_stepped_once_a_round(schedule,
                                                                         torch_scheduler):
    config = run(lr=0.2, rounds=7, **schedule)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = torch_scheduler(opt)
    for r in range(1, 8):   # rounds count from 1
        assert config.lr_at(r) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), r
        opt.step()
        scheduler.step()


@pytest.mark.parametrize(("name", "cls", "extra"), [
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
    ("adam", torch.optim.Adam, {}),
    ("adamw", torch.optim.AdamW, {}),
])
def test_each_optimizer_gets_the_rounds_rate_and_the_weight_decay(name, cls, extra):
    config = run(optimizer=name, lr=0.1, weight_decay=0.01, lr_schedule="step", rounds=3,
                 lr_gamma=0.5, momentum=extra.get("momentum", 0.0))
    opt = make_optimizer(nn.Linear(2, 2), config.optimizer_at(3))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.025) and group["weight_decay"] == 0.01
    for key, value in extra.items():
        assert group[key] == value


def test_a_part_without_trainable_parameters_has_no_optimizer():
    assert make_optimizer(nn.ReLU(), run().optimizer_at(1)) is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, adam, adamw"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, step, cosine"),
    ({"weight_decay": -1.0}, "weight_decay and momentum must be >= 0"),
    ({"lr_step_rounds": 0}, "lr_step_rounds must be >= 1"),
])
def test_an_agent_refuses_a_bad_optimizer_config(fields, message):
    with pytest.raises(AgentError, match=message):
        run(**fields)


def test_evaluation_is_due_every_kth_round_counted_from_1_and_after_the_last():
    config = run(rounds=5, eval_every=2)
    assert [r for r in range(1, 6) if config.evaluates_after(r)] == [2, 4, 5]
