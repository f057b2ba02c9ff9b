"""The planner's iteration model and search, on hand-written profiles with hand-computed times.

Profiles here have 3 blocks whose times are linear in the batch size (seconds per sample),
and links whose rates make one sample's bytes take a round number of seconds, so every
expected time below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from edgectl.errors import EXIT_CONFIG, exit_code_for
from edgectl.planning.iteration import CpuBudget, task_overhead
from edgectl.planning.planner import (
    Constraints,
    Placement,
    Plan,
    PlanError,
    candidate_microbatches,
    memory_fits,
    plan,
    simulate,
)
from edgectl.planning.profiling import FleetProfile
from profiles.records import BlockTiming, ComputeProfile, LinkProfile

EXACT = 1e-9


def compute(host, fwd, bwd, act=(8, 8, 8), params=(2, 0, 0), step=0.0, input_bytes=1000,
            memory=10**12):
    """A 3-block profile: block k takes fwd[k] / bwd[k] seconds per sample."""
    blocks = tuple(BlockTiming(f"b{k}", (f, f * 64), (b, b * 64), a, n)
                   for k, (f, b, a, n) in enumerate(zip(fwd, bwd, act, params, strict=True)))
    return ComputeProfile(host=host, model="tiny", input_shape=(1, 2, 2), num_classes=10,
                          batch_sizes=(1, 64), blocks=blocks, input_bytes=input_bytes,
                          step_s_per_param=step, peak_memory_bytes=0,
                          memory_available_bytes=memory, threads=1)


def link(device, up_s_per_16_bytes=1.0, down_s_per_8_bytes=1.0):
    """With 8-byte activations one sample goes up (8 + 8 label bytes) in up_s_per_16_bytes
    and its gradient comes down in down_s_per_8_bytes; no round-trip time."""
    return LinkProfile(device, "server", 128 / up_s_per_16_bytes, 64 / down_s_per_8_bytes,
                       0.0, 1.0)


DEVICE = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3))            # p = 1: 2 s per sample
SERVER = compute("srv", fwd=(0.25,) * 3, bwd=(0.25,) * 3)       # blocks 1, 2: 1 s per sample


def one_device(placement, device=DEVICE, server=SERVER, up=1.0, batch=4):
    return simulate({"pi": device}, server, {"pi": link("pi", up)}, {"pi": placement},
                    batch)["pi"]


# --- the iteration model ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [
    (1, 20.0),   # F 0-4, U 4-8, S 8-12, D 12-16, B 16-20
    (2, 12.0),   # F ends 2,4; U 4,6; S 6,8; D 8,10; B 8-10, 10-12
    (3, 12.0),   # sizes 2,1,1: F 2,3,4; U 4,5,6; S 6,7,8; D 8,9,10; B 8-10, 10-11, 11-12
    (4, 8.0),    # F 1..4; U 2..5; S 3..6; D 4..7; B 4-5 .. 7-8: the device is never idle
])
def test_iteration_of_a_balanced_pipeline_is_the_hand_computed_schedule(n, expected):
    assert one_device(Placement(1, n)).iteration_s == pytest.approx(expected, rel=EXACT)


def test_gradients_queue_on_a_slow_downlink():
    # N = 2 at 3 s per sample down: S ends 6, 8; D0 6-12, D1 12-18; B0 12-14, B1 18-20
    result = simulate({"pi": DEVICE}, SERVER, {"pi": link("pi", 1.0, 3.0)},
                      {"pi": Placement(1, 2)}, 4)["pi"]
    assert result.iteration_s == pytest.approx(20.0, rel=EXACT)
    assert result.bottleneck == "downlink"


def test_busy_times_and_bottleneck_of_the_balanced_pipeline():
    result = one_device(Placement(1, 4))
    assert result.busy_s == pytest.approx({"device.compute": 8.0, "uplink": 4.0,
                                           "server.compute": 4.0, "downlink": 4.0}, rel=EXACT)
    assert result.bottleneck == "device.compute"


def test_server_step_delays_the_last_gradient_and_device_step_ends_the_iteration():
    device = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3), step=0.25)       # 2 params: 0.5 s
    server = compute("srv", fwd=(0.25,) * 3, bwd=(0.25,) * 3, params=(2, 10, 0), step=0.1)
    # N = 2: S1 6-8 plus the 1 s step -> 9; D1 9-11; B0 8-10, B1 11-13; step -> 13.5
    assert one_device(Placement(1, 2), device, server).iteration_s == pytest.approx(13.5)


def test_p0_sends_the_input_and_streams_at_its_busiest_resource():
    device = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3), input_bytes=8)   # 1 s/sample up
    server = compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3)               # 3 s per sample
    result = one_device(Placement(0, 2), device, server, batch=2)
    # no gradient to wait for: mini-batches stream, the server's 6 s of work per
    # mini-batch is the iteration (one iteration alone would take 7: U 0-1, S 1-4, 4-7)
    assert result.iteration_s == pytest.approx(6.0, rel=EXACT)
    assert result.busy_s["downlink"] == result.busy_s["device.compute"] == 0.0
    slow_link = simulate({"pi": device}, server, {"pi": link("pi", 8.0)},
                         {"pi": Placement(0, 2)}, 2)["pi"]
    assert slow_link.iteration_s == pytest.approx(16.0, rel=EXACT)       # 2 * 8 s up
    assert slow_link.bottleneck == "uplink"


def test_p0_devices_share_the_servers_work():
    device = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3), input_bytes=8)
    server = compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3)
    both = simulate({"a": device, "b": device}, server, {"a": link("a"), "b": link("b")},
                    {"a": Placement(0, 2), "b": Placement(0, 1)}, 2)
    assert both["a"].iteration_s == both["b"].iteration_s == pytest.approx(12.0, rel=EXACT)


def test_fl_trains_the_whole_batch_locally():
    result = one_device(Placement(3, 1))
    assert result.iteration_s == pytest.approx((2 + 6 + 6) * 4, rel=EXACT)
    assert result.busy_s["uplink"] == result.busy_s["server.compute"] == 0.0


def two_devices(order, b_up):
    """Devices a and b at p = 1, N = 1, batch 2; the server takes 2 s per sample for them."""
    server = compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3)
    ups = {"a": 1.0, "b": b_up}
    return simulate({n: DEVICE for n in order}, server, {n: link(n, ups[n]) for n in order},
                    {n: Placement(1, 1) for n in order}, 2)


def test_the_first_arrival_is_served_first_and_delays_the_other_device():
    # a: F 0-2, U 2-4, S 4-8, D 8-10, B 10-12. b: F 0-2, U 2-5, waits for the server until
    # 8, S 8-12, D 12-14, B 14-16 (alone it would end at 13). b comes first in the dict.
    result = two_devices(["b", "a"], b_up=1.5)
    assert result["a"].iteration_s == pytest.approx(12.0, rel=EXACT)
    assert result["b"].iteration_s == pytest.approx(16.0, rel=EXACT)
    assert result["b"].busy_s["server.compute"] == pytest.approx(4.0, rel=EXACT)
    assert result["b"].bottleneck == "server.compute"       # 8 s of shared server work
    alone = one_device(Placement(1, 1), server=compute("srv", fwd=(0.5,) * 3,
                                                       bwd=(0.5,) * 3), up=1.5, batch=2)
    assert alone.iteration_s == pytest.approx(13.0, rel=EXACT)


@pytest.mark.parametrize("order", [["a", "b"], ["b", "a"]])
def test_simultaneous_arrivals_are_served_in_device_order(order):
    result = two_devices(order, b_up=1.0)
    assert result[order[0]].iteration_s == pytest.approx(12.0, rel=EXACT)
    assert result[order[1]].iteration_s == pytest.approx(16.0, rel=EXACT)


def test_a_server_with_two_cores_serves_two_devices_on_two_workers_at_once():
    # Each device on its own worker (agents.workers): a's and b's S both run 4-8, so b
    # ends as a does at 12 instead of waiting for a's S (16 on one core).
    server = dataclasses.replace(compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3),
                                 cpu={"cores": 2, "quota": None})
    result = simulate({n: DEVICE for n in "ab"}, server, {n: link(n) for n in "ab"},
                      {n: Placement(1, 1) for n in "ab"}, 2)
    assert result["a"].iteration_s == result["b"].iteration_s == pytest.approx(12.0, rel=EXACT)
    assert result["b"].busy_s["server.compute"] == pytest.approx(4.0, rel=EXACT)


def test_a_servers_quota_caps_its_workers():
    # 2 cores but a 1-core quota: one worker, served in device order as on one core
    server = dataclasses.replace(compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3),
                                 cpu={"cores": 2, "quota": 1.0})
    result = simulate({n: DEVICE for n in "ab"}, server, {n: link(n) for n in "ab"},
                      {n: Placement(1, 1) for n in "ab"}, 2)
    assert result["b"].iteration_s == pytest.approx(16.0, rel=EXACT)


# --- the search --------------------------------------------------------------------------


def test_plan_picks_the_balanced_pipeline_and_predicts_the_round():
    result = plan({"pi": DEVICE}, SERVER, {"pi": link("pi")}, 4, 10)
    (device,) = result.devices
    assert (device.split_point, device.microbatches) == (1, 4)
    # exchange: 2 params * 4 bytes = 64 bits, down at 64 b/s (1 s) and up at 128 b/s (0.5 s)
    assert result.round_s == pytest.approx(10 * 8 + 1.5, rel=EXACT)
    assert result.split_round_s == pytest.approx(10 * 20 + 1.5, rel=EXACT)    # p = 1, N = 1
    assert result.fl_round_s == pytest.approx(10 * 56 + 1.5, rel=EXACT)
    assert result.speedup_vs_split == pytest.approx(201.5 / 81.5, rel=EXACT)
    assert result.describe() == ("pipar with N=4 at p=1 predicted 2.5x faster than split "
                                 "and 6.9x faster than fl")


def test_a_link_too_slow_makes_every_device_train_locally():
    slow = {n: link(n, 1000.0, 1000.0) for n in ("a", "b")}
    result = plan({"a": DEVICE, "b": DEVICE}, SERVER, slow, 4, 10)
    assert [(d.split_point, d.microbatches) for d in result.devices] == [(3, 1), (3, 1)]
    assert result.round_s == result.fl_round_s
    assert result.iteration_s == pytest.approx(56.0, rel=EXACT)
    assert result.describe() == (
        "fl is predicted fastest: the link is too slow for splitting to pay (split predicted "
        f"{result.split_round_s / result.round_s:.1f}x slower)")
    assert result.split_round_s > 2 * result.round_s


def test_a_server_too_slow_makes_the_device_train_locally():
    server = compute("srv", fwd=(250.0,) * 3, bwd=(250.0,) * 3)
    result = plan({"pi": DEVICE}, server, {"pi": link("pi", 1e-6, 1e-6)}, 4, 10)
    assert result.devices[0].split_point == 3
    assert result.describe().startswith("fl is predicted fastest: the server is too slow")


def test_a_slow_device_with_fast_server_and_link_offloads_and_pipelines():
    device = compute("pi", fwd=(2, 2, 2), bwd=(2, 2, 2), act=(100, 100, 10), params=(0, 0, 0),
                     input_bytes=100_000)
    server = compute("srv", fwd=(0.01,) * 3, bwd=(0.01,) * 3, params=(0, 0, 0))
    fast = LinkProfile("pi", "server", 8000, 8000, 0.0, 1.0)    # 1000 bytes per second
    result = plan({"pi": device}, server, {"pi": fast}, 8, 1)
    chosen = result.devices[0]
    # N = 1: F 16 + U 0.864 + S 0.32 + D 0.8 + B 16. N >= 2 hides all of it behind the
    # forwards: 32 s, so the smallest such N wins the tie.
    assert (chosen.split_point, chosen.microbatches) == (1, 2)
    assert result.iteration_s == pytest.approx(32.0, rel=EXACT)
    assert result.split_round_s == pytest.approx(33.984, rel=EXACT)
    assert result.speedup_vs_split > 1 and result.speedup_vs_fl == pytest.approx(3.0)


def test_a_shared_server_overloaded_by_both_devices_sends_them_back_to_fl():
    # Alone each device is fastest at p = 0 (the server: 1.5 s per sample, 3 s) rather
    # than fl (4 s). Both at p = 0 the second waits until 6 s; so one trains locally, and
    # then the other's p = 0 saves nothing (the round is the first's 4 s): at the same
    # round time a device keeps its blocks, so both train locally.
    device = compute("pi", fwd=(1 / 3,) * 3, bwd=(1 / 3,) * 3, params=(0, 0, 0),
                     input_bytes=8)
    server = compute("srv", fwd=(0.25,) * 3, bwd=(0.25,) * 3, params=(0, 0, 0))
    links = {n: LinkProfile(n, "server", 1e15, 1e15, 0.0, 1.0) for n in "ab"}
    result = plan({"a": device, "b": device}, server, links, 2, 1,
                  constraints=Constraints(allow_raw_upload=True, max_microbatches=1))
    assert [(d.split_point, d.microbatches) for d in result.devices] == [(3, 1), (3, 1)]
    assert result.iteration_s == pytest.approx(4.0, rel=1e-6)
    # split's best: both at p = 2, forwards 0-4/3, server 4/3-7/3 and 7/3-10/3, backwards 4/3
    assert result.split_round_s == pytest.approx(14 / 3, rel=1e-6)


def test_devices_that_pay_only_by_offloading_together_are_planned_together():
    # A round is the longest iteration plus the longest weights exchange, from whichever
    # devices they come. Both at p = 1: F 1, U 1, S 4 (one worker each), D 1, B 1 = 8 s, no
    # weights to exchange (block 0 has none). fl: a 8 s, b 6 s, and 32 weight bytes down
    # (1 s) and up (0.5 s): 9.5 s. Alone, b is faster at fl (7.5 s) and a at p = 1 (8 s);
    # from there a's p = 1 saves nothing while b exchanges weights (9.5 s either way), so
    # a descent from each device's best alone ends at fl for both. The search also starts
    # from the best placement for all alike.
    a = compute("a", fwd=(0.25, 0.375, 0.375), bwd=(0.25, 0.375, 0.375), act=(8, 800, 8),
                params=(0, 0, 8))
    b = compute("b", fwd=(0.25,) * 3, bwd=(0.25,) * 3, act=(8, 800, 8), params=(0, 0, 8))
    server = dataclasses.replace(SERVER, cpu={"cores": 2})
    links = {n: link(n, 0.25, 0.25) for n in "ab"}
    result = plan({"a": a, "b": b}, server, links, 4, 1,
                  constraints=Constraints(max_microbatches=1))
    assert [(d.split_point, d.microbatches) for d in result.devices] == [(1, 1), (1, 1)]
    assert result.round_s == pytest.approx(8.0, rel=EXACT)
    assert result.fl_round_s == pytest.approx(9.5, rel=EXACT)


def test_like_devices_get_one_placement_unless_a_mixed_plan_pays_past_the_tolerance():
    # b is a at forward times 1-2% apart, as two profiles of like devices are. The least
    # round is a at N=4 and b at N=2 (25.5 s); both at N=4 are predicted 0.5% slower,
    # within the tolerance, and the model cannot tell them apart: one placement for all.
    a = compute("a", fwd=(3, 3, 0.5), bwd=(3, 3, 0.5))
    b = dataclasses.replace(a, host="b", blocks=tuple(
        dataclasses.replace(block, forward_s=times) for block, times in
        zip(a.blocks, [(3.03, 190.08), (3.0, 195.84), (0.51, 31.68)], strict=True)))
    links = {n: link(n) for n in "ab"}
    exact = plan({"a": a, "b": b}, SERVER, links, 4, 1, tolerance=0.0)
    assert [(d.split_point, d.microbatches) for d in exact.devices] == [(1, 4), (1, 2)]
    assert exact.round_s == pytest.approx(25.5, rel=EXACT)
    chosen = plan({"a": a, "b": b}, SERVER, links, 4, 1)
    assert [(d.split_point, d.microbatches) for d in chosen.devices] == [(1, 4), (1, 4)]
    assert chosen.round_s == pytest.approx(25.62, rel=EXACT)


def test_the_joint_search_matches_an_exhaustive_one_on_a_small_fleet():
    server = compute("srv", fwd=(0.5,) * 3, bwd=(0.5,) * 3)
    devices = {"a": DEVICE, "b": compute("b", fwd=(2, 1, 1), bwd=(2, 1, 1))}
    links = {"a": link("a", 1.0), "b": link("b", 3.0)}
    exchange = {"a": 1.5, "b": 2.5}            # 64 bits down and up; nothing at p = 0
    options = [Placement(p, n) for p in range(3) for n in range(1, 5)] + [Placement(3, 1)]

    def round_s(pair):
        placements = dict(zip("ab", pair, strict=True))
        iterations = simulate(devices, server, links, placements, 4)
        return 5 * max(d.iteration_s for d in iterations.values()) + max(
            exchange[n] if pl.split_point else 0.0 for n, pl in placements.items())

    best = min(round_s(pair) for pair in itertools.product(options, repeat=2))
    assert plan(devices, server, links, 4, 5).round_s == pytest.approx(best, rel=EXACT)


def test_memory_fits_counts_activations_twice_and_parameters_three_times():
    # p = 2, batch 4: 4 * (8 + 8) * 2 activation bytes + 2 params * 4 bytes * 3 = 152
    assert memory_fits(compute("pi", (1,) * 3, (1,) * 3, memory=152), 2, 4)
    assert not memory_fits(compute("pi", (1,) * 3, (1,) * 3, memory=151), 2, 4)
    assert memory_fits(compute("pi", (1,) * 3, (1,) * 3, memory=0), 0, 4)


def test_a_model_too_big_for_the_device_is_not_trained_there():
    small = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3), memory=152)    # p = 3 needs 216
    slow = {"pi": link("pi", 1000.0, 1000.0)}
    result = plan({"pi": small}, SERVER, slow, 4, 10)
    assert result.devices[0].split_point < 3
    assert result.fl_round_s == float("inf")
    assert "fl does not fit in memory" in result.describe()


def test_fixed_placements_are_respected_and_the_rest_is_planned():
    devices, links = {"a": DEVICE, "b": DEVICE}, {"a": link("a"), "b": link("b")}
    result = plan(devices, SERVER, links, 4, 10, fixed={"a": Placement(2, 3)})
    a, b = result.devices
    assert (a.device, a.split_point, a.microbatches) == ("a", 2, 3)
    placements = {"a": Placement(2, 3), "b": Placement(b.split_point, b.microbatches)}
    again = simulate(devices, SERVER, links, placements, 4)
    assert result.iteration_s == pytest.approx(max(d.iteration_s for d in again.values()))


@pytest.mark.parametrize(("fixed", "message"), [
    ({"c": Placement(1, 1)}, "not a profiled device"),
    ({"a": Placement(3, 2)}, "choose 1..1"),
    ({"a": Placement(4, 1)}, "out of range"),
])
def test_impossible_fixed_placements_are_refused(fixed, message):
    with pytest.raises(PlanError, match=message):
        plan({"a": DEVICE}, SERVER, {"a": link("a")}, 4, 10, fixed=fixed)


def test_candidate_microbatches():
    assert candidate_microbatches(32) == list(range(1, 17))
    assert candidate_microbatches(3) == [1, 2, 3]
    assert candidate_microbatches(1) == [1]


# --- raw data stays on the device; constraints -------------------------------------------


def raw_upload_is_fastest():
    """A fleet where p = 0 (the raw input up, no gradient down) is the fastest placement:
    a fast link, a fast server, a slow first block and tiny inputs."""
    device = compute("pi", fwd=(4, 3, 3), bwd=(4, 3, 3), input_bytes=8)
    links = {n: LinkProfile(n, "server", 1e15, 1e15, 0.0, 1.0) for n in "ab"}
    return {"a": device, "b": device}, links


def test_by_default_no_device_sends_raw_samples_even_when_that_is_fastest():
    devices, links = raw_upload_is_fastest()
    allowed = plan(devices, SERVER, links, 4, 10, constraints=Constraints(allow_raw_upload=True))
    assert [d.split_point for d in allowed.devices] == [0, 0]
    assert allowed.raw_upload_devices == ("a", "b") and allowed.allow_raw_upload
    assert "raw samples of a, b go to the server (allowed by --allow-raw-upload)" in \
        allowed.describe()
    private = plan(devices, SERVER, links, 4, 10)
    assert all(d.split_point >= 1 for d in private.devices)
    assert private.raw_upload_devices == () and not private.allow_raw_upload
    assert "raw samples" not in private.describe()
    assert private.round_s > allowed.round_s       # privacy costs time here, and it shows


def test_pinning_a_device_to_raw_upload_needs_the_opt_in():
    devices, links = raw_upload_is_fastest()
    with pytest.raises(PlanError, match=r"device a: split point 0 is not allowed; choose "
                                        r"1..3 \(p = 0 sends raw samples .* --allow-raw-upload"):
        plan(devices, SERVER, links, 4, 10, constraints=Constraints(pins=(("a", 0, None),)))


@pytest.mark.parametrize(("constraints", "allowed"), [
    (Constraints(split_point=2), lambda p, n, name: p == 2),
    (Constraints(microbatches=2), lambda p, n, name: n == 2 and p < 3),
    (Constraints(min_split_point=2), lambda p, n, name: p >= 2),
    (Constraints(max_microbatches=2), lambda p, n, name: n <= 2),
    (Constraints(pins=(("a", 3, None), ("b", None, 4))),
     lambda p, n, name: (p, n) == (3, 1) if name == "a" else n == 4),
])
def test_constraints_narrow_what_the_plan_may_choose(constraints, allowed):
    devices, links = {"a": DEVICE, "b": DEVICE}, {"a": link("a"), "b": link("b")}
    result = plan(devices, SERVER, links, 4, 10, constraints=constraints)
    for d in result.devices:
        assert d.split_point >= 1 and allowed(d.split_point, d.microbatches, d.device), d
    # the best placement the constraints leave, found exhaustively, is the one chosen
    unconstrained = plan(devices, SERVER, links, 4, 10, tolerance=0.0)
    assert result.round_s >= unconstrained.round_s * (1 - EXACT)


def test_the_plan_records_each_devices_mode_in_words():
    devices, links = {"a": DEVICE, "b": DEVICE}, {"a": link("a"), "b": link("b")}
    result = plan(devices, SERVER, links, 4, 10, constraints=Constraints(
        pins=(("a", 3, None), ("b", 1, 1))))
    modes = {d["device"]: d["mode"] for d in result.to_json()["devices"]}
    assert modes == {"a": "fl", "b": "split"}


# --- plans as data -------------------------------------------------------------------------


def test_plan_json_round_trips_through_text():
    small = compute("pi", fwd=(1, 3, 3), bwd=(1, 3, 3), memory=152)    # fl_round_s is inf
    result = plan({"pi": small, "q": DEVICE}, SERVER, {"pi": link("pi"), "q": link("q")}, 4, 3)
    text = json.dumps(result.to_json(), allow_nan=False)
    assert json.loads(text)["plan_version"] == 2
    assert Plan.from_json(json.loads(text)) == result


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(plan_version=1), "plan_version 1"),
    (lambda d: d.pop("round_s"), "plan.round_s: expected a number, got nothing"),
    (lambda d: d.update(batch_size="4\n"), r"plan.batch_size: expected an integer, got '4\\n'"),
    (lambda d: d["devices"][0]["busy_s"].pop("uplink"), r"plan.devices\[0\].busy_s"),
    (lambda d: d.update(devices=[]), "plan.devices"),
])
def test_a_malformed_plan_is_one_line_naming_the_key(change, message):
    data = plan({"pi": DEVICE}, SERVER, {"pi": link("pi")}, 4, 10).to_json()
    change(data)
    with pytest.raises(PlanError, match=message) as info:
        Plan.from_json(data)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError) and exit_code_for(info.value) == EXIT_CONFIG


# --- calibrated per-task overheads ------------------------------------------------------


def with_overhead(profile, seconds):
    return dataclasses.replace(profile, task_overhead_s=seconds)


@pytest.mark.parametrize(("overhead", "expected"), [
    (0.5, 13.0),  # S 2.5 s: S0 4-6.5, S1 6.5-9; D0 6.5-8.5, D1 9-11; B0 8.5-10.5, B1 11-13
    (-5.0, 10.0),  # S clamped to 0: S0 4, S1 6; D0 4-6, D1 6-8; B0 6-8, B1 8-10
])
def test_the_servers_overhead_lengthens_every_server_task(overhead, expected):
    result = one_device(Placement(1, 2), server=with_overhead(SERVER, overhead))
    assert result.iteration_s == pytest.approx(expected, rel=EXACT)


def test_a_devices_overhead_lengthens_its_forwards_and_backwards():
    # N = 1, 4 samples: F 0-5, U 5-9, S 9-13, D 13-17, B 17-22
    result = one_device(Placement(1, 1), device=with_overhead(DEVICE, 1.0))
    assert result.iteration_s == pytest.approx(22.0, rel=EXACT)
    # p = L: one local task, 4 samples * 14 s, plus 1 s
    local = one_device(Placement(3, 1), device=with_overhead(DEVICE, 1.0))
    assert local.iteration_s == pytest.approx(57.0, rel=EXACT)


def test_a_task_probes_cpu_per_task_counts_at_the_devices_speed_unless_calibrated():
    # the probe measured 0.25 s of CPU per task on a device holding half a core: 0.5 s a
    # task, as calibration's 0.5 would be (N = 1: F 0-4.5, U -8.5, S -12.5, D -16.5, B -21)
    probed = dataclasses.replace(DEVICE, agent_task_cpu_s=0.25, cpu={"quota": 0.5})
    assert task_overhead(probed) == pytest.approx(0.5, rel=EXACT)
    assert one_device(Placement(1, 1), device=probed).iteration_s == \
        pytest.approx(21.0, rel=EXACT)
    # a calibrated device: calibration measured the agents training for real, and wins
    both = dataclasses.replace(probed, task_overhead_s=1.0)
    assert task_overhead(both) == 1.0
    assert one_device(Placement(1, 1), device=both).iteration_s == pytest.approx(22.0, rel=EXACT)
    # plain profiles keep the probe's figure: it was measured with them, not calibrated
    fleet = FleetProfile({"pi": both}, SERVER, {"pi": link("pi")})
    assert task_overhead(fleet.plain().devices["pi"]) == pytest.approx(0.5, rel=EXACT)
    assert task_overhead(DEVICE) == 0.0   # never probed (a server, an older record)


def test_the_task_probes_figure_survives_the_profile_store_and_old_records_read_as_none():
    data = dataclasses.replace(DEVICE, agent_task_cpu_s=0.0015).to_json()
    assert ComputeProfile.from_json(json.loads(json.dumps(data))).agent_task_cpu_s == 0.0015
    del data["agent_task_cpu_s"]
    assert ComputeProfile.from_json(data).agent_task_cpu_s is None


def test_the_servers_overhead_per_byte_runs_beside_its_tasks_and_bounds_its_worker():
    # N = 2 of 2 samples: 2 * (8 + 8 + 8) = 48 bytes a task, at 1/96 s a byte 0.5 s a task:
    # reading frames and sending gradients run beside the worker's compute, so the tasks
    # stay 2 s (iteration 12 s as without it) and the worker is busy 4 + 1 s
    server = dataclasses.replace(SERVER, byte_overhead_s=1 / 96)
    light = one_device(Placement(1, 2), server=server)
    assert light.iteration_s == pytest.approx(12.0, rel=EXACT)
    assert light.busy_s["server.compute"] == pytest.approx(5.0, rel=EXACT)
    # at 1/4 s a byte (12 s a task) the worker's 4 + 24 s are the iteration's floor
    heavy = one_device(Placement(1, 2), server=dataclasses.replace(SERVER, byte_overhead_s=0.25))
    assert heavy.iteration_s == pytest.approx(28.0, rel=EXACT)
    # p = 0: 2 * (1000 + 8) bytes in, no gradient out
    p0 = one_device(Placement(0, 2), server=dataclasses.replace(SERVER, byte_overhead_s=1e-3))
    plain = one_device(Placement(0, 2))
    assert p0.busy_s["server.compute"] - plain.busy_s["server.compute"] == \
        pytest.approx(2 * 2.016)


def test_a_server_whose_worker_fills_its_quota_gives_the_transfers_their_cpu():
    # As above (1/96 s a byte: 1/3 s to read each activation, 1/6 s to send each gradient),
    # on a server held to 1 core that its one worker fills: S0 (4-6) runs while U1 (4-6)
    # streams in and gives up its 1/3 s: ends 6 1/3; D0 6 1/3-8 1/3 streams out while S1
    # runs: S1 6 1/3-8 1/2; D1 8 1/2-10 1/2, B1 10 1/2-12 1/2 (12 s without the quota)
    server = dataclasses.replace(SERVER, byte_overhead_s=1 / 96,
                                 cpu={"cores": 2, "quota": 1.0, "period": 0.01})
    assert one_device(Placement(1, 2), server=server).iteration_s == \
        pytest.approx(12.5, rel=EXACT)
    # with 2 cores for its 1 worker the transfers have a core of their own: 12 s again
    roomy = dataclasses.replace(server, cpu={"cores": 2, "quota": 2.0, "period": 0.01})
    assert one_device(Placement(1, 2), server=roomy).iteration_s == \
        pytest.approx(12.0, rel=EXACT)


# --- CPU quotas: a token bucket per throttled device -------------------------------------


def budget(level=None):
    return CpuBudget.of(QUARTER_PERIODIC, level)


QUARTER_PERIODIC = dataclasses.replace(DEVICE, cpu={"cores": 2, "quota": 0.25, "period": 4.0})


def test_a_throttled_device_runs_unthrottled_while_its_periods_budget_lasts():
    # quota 0.25 of one core, period 4 s: 1 CPU-s a period. A task of 2 s at the throttled
    # speed (0.5 CPU-s) from a full budget runs at full speed: 0.5 s, leaving 1 - 0.375
    b = budget()
    assert b.run(0.0, 2.0) == pytest.approx(0.5, rel=EXACT)
    assert b.level == pytest.approx(0.625, rel=EXACT)
    # idle 0.5 s refills 0.125: 0.75. A task of 8 s (2 CPU-s) at 1.0: full speed until
    # empty (0.75 / 0.75 = 1 s, 1 CPU-s), then the other 1 CPU-s at a quarter core, 4 s
    assert b.run(1.0, 8.0) == pytest.approx(1.0 + 1.0 + 4.0, rel=EXACT)
    assert b.level == 0.0


def test_work_of_other_threads_is_a_debt_the_next_task_pays():
    b = budget(level=0.0)
    b.spend(0.0, 2.0)                           # 0.5 CPU-s owed
    assert b.run(0.0, 2.0) == pytest.approx(4.0, rel=EXACT)  # 1 CPU-s at a quarter core


def test_a_device_without_a_known_period_runs_at_its_profiled_speed():
    assert CpuBudget.of(dataclasses.replace(DEVICE, cpu={"quota": 0.25})) is None
    assert CpuBudget.of(DEVICE) is None                          # no quota
    assert CpuBudget.of(dataclasses.replace(DEVICE, cpu={"cores": 2, "quota": 1.0,
                                                         "period": 0.1})) is None


def test_a_sequential_split_on_a_throttled_device_bursts_after_waiting():
    """N = 1 on 4 samples, quota 0.25, period 4 s. From a full budget: F 0-1 (1 CPU-s at
    full speed, 0.25 left), U 1-5, S 5-9, D 9-13, B 13-14 (refilled). Steady, the next
    iteration starts with the 0.25 the last one left: F 0-3 (0.333 CPU-s fast, 0.667 at a
    quarter), U 3-7, S 7-11, D 11-15, B 15-16: 16 s, against 20 at the throttled speed."""
    assert one_device(Placement(1, 1), device=QUARTER_PERIODIC).iteration_s == \
        pytest.approx(16.0, rel=EXACT)
    assert one_device(Placement(1, 1)).iteration_s == pytest.approx(20.0, rel=EXACT)


def test_overheads_survive_the_profile_store_and_old_records_read_as_none():
    data = dataclasses.replace(SERVER, task_overhead_s=0.002, byte_overhead_s=1e-8).to_json()
    loaded = ComputeProfile.from_json(json.loads(json.dumps(data)))
    assert (loaded.task_overhead_s, loaded.byte_overhead_s) == (0.002, 1e-8)
    del data["task_overhead_s"], data["byte_overhead_s"]
    loaded = ComputeProfile.from_json(data)
    assert (loaded.task_overhead_s, loaded.byte_overhead_s) == (0.0, 0.0)


def test_more_microbatches_must_be_predicted_to_pay_more_than_the_tolerance():
    device = compute("pi", fwd=(0.5, 3, 3), bwd=(0.5, 3, 3))
    server = compute("srv", fwd=(0.05,) * 3, bwd=(0.05,) * 3)
    links = {"pi": link("pi", 0.2, 0.2)}
    exact = plan({"pi": device}, server, links, 4, 1, tolerance=0.0)
    wide = plan({"pi": device}, server, links, 4, 1, tolerance=0.05)
    assert [(d.split_point, d.microbatches) for d in exact.devices] == [(1, 4)]
    assert [(d.split_point, d.microbatches) for d in wide.devices] == [(1, 2)]
    assert exact.round_s == pytest.approx(4.3) and wide.round_s == pytest.approx(4.5)
    assert wide.round_s <= exact.round_s * 1.05                            # 4.7% slower
    tight = plan({"pi": device}, server, links, 4, 1, tolerance=0.04)
    assert [(d.split_point, d.microbatches) for d in tight.devices] == [(1, 4)]
    default = plan({"pi": device}, server, links, 4, 1)                     # 2%
    assert [(d.split_point, d.microbatches) for d in default.devices] == [(1, 4)]
    with pytest.raises(PlanError, match="tolerance -0.1: must be at least 0"):
        plan({"pi": device}, server, links, 4, 1, tolerance=-0.1)


# --- hosts that share a machine's cores -------------------------------------------------

def on_machine(profile, machine, cores=2, quota=None, threads=1):
    return dataclasses.replace(profile, host_id=machine, threads=threads,
                               cpu={"cores": cores, "quota": quota})


def test_agents_sharing_two_cores_wait_for_them():
    # Alone, two devices at p = 1, N = 1 each take 20 s (the balanced pipeline's schedule):
    # 8 s of device compute, 4 s of server compute each. Three one-thread agents on two
    # cores need (8 + 8 + 4 + 4) / 2 = 12 s of the machine per iteration: under 20, so no
    # wait. At N = 4 they would take 8 s alone, but the machine needs 12.
    devices = {n: on_machine(DEVICE, "m") for n in ("a", "b")}
    links = {n: link(n) for n in devices}
    server = on_machine(SERVER, "m")
    sequential = simulate(devices, server, links, {n: Placement(1, 1) for n in devices}, 4)
    assert sequential["a"].iteration_s == pytest.approx(20.0, rel=EXACT)
    piped = simulate(devices, server, links, {n: Placement(1, 4) for n in devices}, 4)
    assert piped["a"].iteration_s == pytest.approx(12.0, rel=EXACT)
    assert piped["a"].bottleneck == "shared.cpu"
    # the same hosts on machines of their own: 8 s, the balanced pipeline (the server has
    # two cores, so a worker per device)
    apart = simulate({n: on_machine(DEVICE, n) for n in devices}, on_machine(SERVER, "s"),
                     links, {n: Placement(1, 4) for n in devices}, 4)
    assert apart["a"].iteration_s == pytest.approx(8.0, rel=EXACT)
    assert apart["a"].bottleneck == "device.compute"


def test_quotas_that_fit_the_machine_never_wait_for_it():
    devices = {n: on_machine(DEVICE, "m", quota=0.25) for n in ("a", "b", "c")}
    server = on_machine(SERVER, "m", quota=1.0)
    links = {n: link(n) for n in devices}
    placements = {n: Placement(1, 4) for n in devices}
    alone = simulate({n: dataclasses.replace(d, host_id="") for n, d in devices.items()},
                     dataclasses.replace(server, host_id=""), links, placements, 4)
    shared = simulate(devices, server, links, placements, 4)
    assert shared == alone
