"""The optimizer and learning-rate schedule every stage builds, from the run config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.config import DeviceSpec, RunConfig
from agents.errors import AgentError
from agents.stage import FunctionalSGD, make_optimizer


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
    opt = make_optimizer(nn.Linear(2, 2), config.optimizer_at(3), wrappable=True)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.025) and group["weight_decay"] == 0.01
    for key, value in extra.items():
        assert group[key] == value


def test_plain_sgd_is_torchs_sgd_function_and_dp_stages_get_torchs_class():
    settings = run(lr=0.1, momentum=0.9, weight_decay=0.01).optimizer_at(1)
    plain = make_optimizer(nn.Linear(2, 2), settings)
    assert type(plain) is FunctionalSGD and plain.settings == settings
    assert type(make_optimizer(nn.Linear(2, 2), settings, wrappable=True)) is torch.optim.SGD


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.01)])
def test_functional_sgd_moves_every_weight_exactly_as_torch_sgd(momentum, weight_decay):
    """Five steps of a small conv net, one layer left without a gradient on some steps (a
    frozen or unused part: SGD skips it and keeps its momentum): bit-identical weights."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3),
                             nn.Linear(3, 3))
    ours, theirs = net(), net()
    settings = run(lr=0.05, momentum=momentum, weight_decay=weight_decay).optimizer_at(1)
    opt_ours = make_optimizer(ours, settings)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum,
                                 weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        x, y = torch.randn(8, 1, 6, 6, generator=generator), torch.arange(8) % 3
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            head = model[:4] if step % 2 else model   # odd steps: the last layer idles
            nn.functional.cross_entropy(head(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), name


def in_a_fresh_interpreter(script: str) -> str:
    """What `script` prints, run by a new Python in the repository root: a module imported
    once stays imported, so import checks need an interpreter of their own."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    return done.stdout


def test_a_plain_sgd_stage_never_imports_torchs_compiler_stack():
    """torch.optim's Optimizer imports torch._dynamo at its first step (1 s of CPU here,
    ~10 s on a 0.1-core device); a stage's plain sgd trains without it, and the class
    that DP stages get still does (which is what the warm-up is for)."""
    script = """
import sys, torch
from torch import nn
from agents.config import OptimizerSettings
from agents.stage import DeviceStage, make_optimizer
stage = DeviceStage(nn.Linear(4, 2), OptimizerSettings("sgd", 0.1, momentum=0.9))
stage.local_step(torch.randn(3, 4), torch.tensor([0, 1, 0]))
stage.step()
before = "torch._dynamo" in sys.modules
make_optimizer(nn.Linear(4, 2), OptimizerSettings("sgd", 0.1), wrappable=True).step()
print(before, "torch._dynamo" in sys.modules)
"""
    assert in_a_fresh_interpreter(script).split() == ["False", "True"]


def test_after_a_devices_warm_ups_its_first_round_imports_nothing():
    """Every lazy import of a round lands in the agent's start, beside its connection, not
    in a timed round: a split device's first backward with an explicit gradient imported
    torch's symbolic-shape checks (sympy: 0.27 s here, seconds on a slow device) once the
    optimizer no longer imported them as part of torch._dynamo."""
    script = """
import sys, torch
from agents.config import OptimizerSettings
from agents.device import warm_up_model
from agents.stage import DeviceStage, ServerStage, warm_up_optimizer
from partitions.parts import split
from partitions.zoo import build_model
settings = OptimizerSettings("sgd", 0.1, momentum=0.9)
model = build_model("vgg5", (1, 28, 28), 10)
x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
warm_up_optimizer(settings)
warm_up_model(model, x[:2], y[:2])
before = set(sys.modules)
device_part, server_part = split(model, 2)
device, server = DeviceStage(device_part, settings), ServerStage(server_part, settings)
for mb in range(2):
    act = device.forward(mb, x[mb * 4:(mb + 1) * 4])
    grad, _ = server.train_microbatch(act, y[mb * 4:(mb + 1) * 4], 0.5)
    device.backward(mb, grad)
device.step()
server.step()
print(sorted(set(sys.modules) - before))
"""
    printed = in_a_fresh_interpreter(script)
    assert printed.strip() == "[]", printed[:500]


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
