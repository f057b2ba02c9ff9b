"""DP-SGD (agents/privacy.py) on a tiny model, checked against per-sample gradients computed
one sample at a time, without Opacus."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agents.config import DeviceSpec, DPSettings, RunConfig
from agents.errors import AgentError
from agents.privacy import (
    PrivacyAccountant,
    PrivateDeviceStage,
    PrivateServerStage,
    require_opacus,
    trainable_parts,
)
from agents.schedule import microbatch_slices
from edgectl.errors import UsageError
from edgectl.runs.options import TrainOptions
from partitions.parts import split
from partitions.zoo import BlockModel

pytest.importorskip("opacus")

B = 8


def tiny_model() -> BlockModel:
    torch.manual_seed(0)
    return BlockModel("tiny", (1, 6, 6), 4, [
        ("conv", nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten())),
        ("fc", nn.Sequential(nn.Linear(108, 4)))])


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 1, 6, 6, generator=g), torch.randint(0, 4, (B,), generator=g)


def run_config(**dp: object) -> RunConfig:
    return RunConfig("r", "pipar", "tiny", "none", (DeviceSpec("d1"),), batch_size=B,
                     batch_norm=False, lr=0.1, momentum=0.0,
                     dp=DPSettings(**{"noise_seed": 7, **dp}))


def pipelined_step(model: BlockModel, run: RunConfig, n: int, *, step: bool = True):
    """One mini-batch as pipar runs it, in one process: all N device forwards, the server
    training each micro-batch as it arrives, then the N device backwards in order."""
    device_part, server_part = split(model, 1)
    dev = PrivateDeviceStage(device_part, run.optimizer_at(1), run, parts=2, microbatches=n,
                             round_=1, device_index=0)
    srv = PrivateServerStage(server_part, run.optimizer_at(1), run, parts=2, round_=1,
                             device_index=0)
    x, y = batch()
    slices = microbatch_slices(B, n)
    grads = [srv.train_microbatch(dev.forward(i, x[s]), y[s], (s.stop - s.start) / B)[0]
             for i, s in enumerate(slices)]
    for i, g in enumerate(grads):
        dev.backward(i, g)
    if step:
        dev.step(), srv.step()
        dev.close(), srv.close()
    return dev, srv


def per_sample_gradients(model: BlockModel) -> list[list[torch.Tensor]]:
    """Each sample's gradient of its own loss, one backward per sample."""
    x, y = batch()
    params = list(model.parameters())
    return [list(torch.autograd.grad(F.cross_entropy(model(x[j:j + 1]), y[j:j + 1]), params))
            for j in range(B)]


def test_clipping_bounds_every_per_sample_gradient_norm():
    """Pipelined in 3 uneven micro-batches: Opacus's per-sample gradients are the manual
    ones, each part's share is clipped to C / sqrt(2) (so the whole model's to C), the
    clipped sum is what the manual computation gives, and the noise has std sigma * C."""
    C, sigma = 0.05, 2.0
    model = tiny_model()
    manual = per_sample_gradients(model)
    dev, srv = pipelined_step(model, run_config(max_grad_norm=C, noise_multiplier=sigma), 3,
                              step=False)
    dev.optimizer.step(), srv.optimizer.step()   # keeps grad_sample and summed_grad to read
    params = list(dev.part.parameters()) + list(srv.part.parameters())
    parts = [range(0, 2), range(2, 4)]            # conv weight, bias | fc weight, bias
    noise, joint = [], torch.zeros(B)
    for part in parts:
        norms = torch.stack([torch.cat([manual[j][i].flatten() for i in part]).norm()
                             for j in range(B)])
        assert (norms > C).all(), "clipping must bind for the test to mean anything"
        factor = (C / math.sqrt(2) / (norms + 1e-6)).clamp(max=1.0)
        joint += (factor * norms) ** 2
        for i in part:
            p = params[i]
            expected = torch.stack([manual[j][i] for j in range(B)])
            torch.testing.assert_close(p.grad_sample, expected, rtol=1e-4, atol=1e-6)
            clipped = torch.einsum("j,j...->...", factor, expected)
            torch.testing.assert_close(p.summed_grad, clipped, rtol=1e-4, atol=1e-6)
            noise.append((p.grad * B - p.summed_grad).flatten())
    assert (joint.sqrt() <= C * (1 + 1e-5)).all()
    assert torch.cat(noise).std().item() == pytest.approx(sigma * C, rel=0.15)


@pytest.mark.parametrize("n", [3, 4, 8])
def test_pipar_with_dp_computes_the_same_update_at_any_microbatch_count(n):
    one = tiny_model()
    pipelined_step(one, run_config(), 1)
    many = tiny_model()
    pipelined_step(many, run_config(), n)
    moved = max((a - b).abs().max().item() for a, b in
                zip(one.parameters(), tiny_model().parameters(), strict=True))
    assert moved > 1e-3
    for (name, a), b in zip(one.named_parameters(), many.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, k=name: f"{k}: {m}")


def test_the_noise_seed_decides_the_noise():
    """The control for the test above: another seed gives another update."""
    a, b = tiny_model(), tiny_model()
    pipelined_step(a, run_config(noise_seed=1), 4)
    pipelined_step(b, run_config(noise_seed=2), 4)
    assert max((p - q).abs().max().item()
               for p, q in zip(a.parameters(), b.parameters(), strict=True)) > 1e-3


def test_a_closed_stage_leaves_no_hooks_so_the_next_round_counts_each_sample_once():
    model = tiny_model()
    pipelined_step(model, run_config(), 2)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    dev, srv = pipelined_step(model, run_config(), 2, step=False)
    assert all(sum(len(g) for g in p.grad_sample) == B for p in model.parameters())
    dev.close(), srv.close()


def test_fl_trains_one_part_with_the_whole_clipping_norm():
    model = tiny_model()
    assert trainable_parts(model, 1) == 2
    assert trainable_parts(model, 2) == trainable_parts(model, 0) == 1
    run = run_config(max_grad_norm=0.05)
    stage = PrivateDeviceStage(model, run.optimizer_at(1), run, parts=1, microbatches=1,
                               round_=1, device_index=0)
    assert stage.optimizer.optimizer.max_grad_norm == 0.05
    x, y = batch()
    loss = stage.local_step(x, y)
    assert loss == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
    stage.step()
    stage.close()


def test_epsilon_is_opacus_rdp_accountant_for_the_recorded_steps():
    from opacus.accountants import RDPAccountant

    dp = DPSettings(noise_multiplier=1.1, delta=1e-5)
    ledger = PrivacyAccountant(dp, 32, {"a": 3200, "b": 1600})
    ledger.record("a", 60), ledger.record("a", 40), ledger.record("b", 100)
    expected = {}
    for device, q in (("a", 0.01), ("b", 0.02)):
        accountant = RDPAccountant()
        accountant.history = [(1.1, q, 100)]
        expected[device] = accountant.get_epsilon(delta=1e-5)
    record = ledger.to_json()
    assert record["devices"]["a"] == {"sample_rate": 0.01, "steps": 100,
                                      "epsilon": pytest.approx(expected["a"])}
    assert record["epsilon"] == pytest.approx(expected["b"]) and expected["b"] > expected["a"]


def test_batch_norm_is_refused_under_dp_naming_the_fix():
    with pytest.raises(UsageError, match="--no-batch-norm"):
        TrainOptions(dp=True)
    with pytest.raises(AgentError, match="batch-norm"):
        RunConfig("r", "fl", "vgg5", "fashion-mnist", (DeviceSpec("d1"),), dp=DPSettings())


def test_dp_options_need_dp_and_sensible_values():
    with pytest.raises(UsageError, match="--dp-noise-multiplier applies with --dp only"):
        TrainOptions(dp_noise_multiplier=1.0, batch_norm=False)
    with pytest.raises(UsageError, match="--dp-delta must be between 0 and 1"):
        TrainOptions(dp=True, batch_norm=False, dp_delta=1.0)
    with pytest.raises(UsageError, match="--dp-max-grad-norm must be positive"):
        TrainOptions(dp=True, batch_norm=False, dp_max_grad_norm=0.0)
    options = TrainOptions(dp=True, batch_norm=False, dp_noise_multiplier=0.8)
    assert options.as_run_fields()["dp"] == DPSettings(noise_multiplier=0.8)
    assert TrainOptions().as_run_fields()["dp"] is None


def test_the_run_config_carries_dp_to_the_agents():
    run = run_config(noise_multiplier=0.7)
    assert RunConfig.from_json(run.to_json()) == run


def test_a_host_without_opacus_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)   # import opacus raises ImportError
    with pytest.raises(AgentError, match=r"edgectl provision --dp"):
        require_opacus()
