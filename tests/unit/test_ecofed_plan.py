"""EcoFed's plan on test_planner's hand-written profiles, with hand-computed round times."""

from __future__ import annotations

import pytest

from edgectl.planning.ecofed_plan import plan_ecofed
from edgectl.planning.planner import Constraints, Placement, PlanError, simulate
from tests.unit.test_planner import SERVER, compute, link

# 3 blocks; per sample the device forwards block 0 in 5 s, blocks 1-2 in 3 s each; the
# server forwards and backwards each block in 0.25 s; activations are 8 bytes a sample and
# a link moves 16 bytes a second up.
DEVICE = compute("pi", fwd=(5, 3, 3), bwd=(5, 3, 3))
B, BATCHES = 4, 10


def ecofed(period: int, ratio: float = 0.25, constraints: Constraints = Constraints(),
           devices: int = 1):
    names = [f"pi{i}" for i in range(devices)]
    return plan_ecofed({n: DEVICE for n in names}, SERVER, {n: link(n) for n in names}, B,
                       BATCHES, constraints=constraints, replay_period=period,
                       uplink_ratio=ratio)


def test_an_upload_round_streams_and_a_replay_round_is_the_servers_alone():
    # p = 1: F 4 x 5 = 20 s; U 4 x (8/4 + 8) = 40 B = 2.5 s; S 4 x (0.5 + 0.5) = 4 s. The
    # device streams: an iteration is its busiest resource, 20 s; 10 mini-batches: 200 s.
    # A replay round: the server's 4 s x 10 = 40 s. p = 2 forwards 32 s a mini-batch.
    chosen = ecofed(period=1)
    assert [(d.split_point, d.microbatches) for d in chosen.devices] == [(1, 1)]
    assert chosen.upload_round_s == pytest.approx(200.0)
    assert chosen.replay_round_s == pytest.approx(40.0)
    assert chosen.round_s == pytest.approx(200.0)
    assert ecofed(period=2).round_s == pytest.approx((200 + 40) / 2)
    assert ecofed(period=4).round_s == pytest.approx((200 + 3 * 40) / 4)
    assert chosen.devices[0].busy_s["downlink"] == 0.0
    assert chosen.devices[0].bottleneck == "device.compute"


def test_no_backward_no_gradient_and_a_quarter_of_the_uplink_against_split():
    # split at p = 1, N = 1: F 20, U 4 x 16 B = 4 s, S 4, D 4 x 8 B / 8 B/s = 4, B 20: 52 s
    split = simulate({"pi": DEVICE}, SERVER, {"pi": link("pi")}, {"pi": Placement(1, 1)},
                     B)["pi"]
    assert split.iteration_s == pytest.approx(52.0)
    chosen = ecofed(period=1, ratio=1.0)   # unquantized: U 4 s, still off the critical path
    assert chosen.devices[0].busy_s["uplink"] == pytest.approx(4.0)
    assert ecofed(period=1).devices[0].busy_s["uplink"] == pytest.approx(2.5)
    assert chosen.speedup_vs_split > 1
    assert "ecofed at p=1 (uploads every round)" in chosen.describe()
    assert chosen.to_json()["strategy"] == "ecofed"


def test_devices_share_the_servers_worker_in_a_replay_round():
    # two devices on the server's one worker: a replay round is 2 x 40 s
    assert ecofed(period=2, devices=2).replay_round_s == pytest.approx(80.0)


def test_one_split_point_for_the_fleet_never_all_on_the_device():
    pins = Constraints(pins=(("pi0", 1, None), ("pi1", 2, None)))
    with pytest.raises(PlanError, match="one split point"):
        ecofed(period=1, constraints=pins, devices=2)
    assert ecofed(period=1, constraints=Constraints(split_point=2)).devices[0].split_point == 2
    with pytest.raises(PlanError, match="no split point"):
        ecofed(period=1, constraints=Constraints(split_point=3))
