"""Re-planning from measurements (edgectl.planning.adaptive) and the control channel that
carries its placements to the server (agents.control)."""

from __future__ import annotations

import json
import os

import pytest

from agents.control import ControlChannel, placements_from
from agents.errors import AgentError
from edgectl.planning.adaptive import (
    Estimate,
    Measured,
    estimate_fleet,
    measure_round,
    replan,
    scaled,
)
from edgectl.planning.planner import Placement, simulate
from profiles.records import LinkProfile
from tests.unit.test_planner import DEVICE, SERVER, compute, link

# --- the control channel -------------------------------------------------------------


def test_the_launch_line_and_control_lines_come_apart_however_they_arrive():
    import threading
    import time

    first = {"type": "placements", "round": 1, "devices": {"d1": [2, 4]}}
    second = {"type": "placements", "round": 2, "devices": {"d1": [3, 1]}}
    text = (b'{"run": 1}\n' + json.dumps(first).encode() + b"\nnot json\n[1]\n"
            + b'{"type": "other"}\n' + json.dumps(second).encode() + b"\n")
    r, w = os.pipe()
    os.write(w, text[:5])                   # the launch line arrives in pieces

    def rest() -> None:
        for k in range(5, len(text), 7):    # and so does every control line after it
            os.write(w, text[k:k + 7])
            time.sleep(0.001)
        os.close(w)
    threading.Thread(target=rest).start()
    control = ControlChannel(r)
    assert control.readline() == '{"run": 1}'
    closed = threading.Event()
    control.watch(on_close=closed.set)
    assert control.expect("placements", timeout=5) == first
    assert control.expect("placements", timeout=5) == second   # "other" skipped, junk dropped
    assert closed.wait(5)
    with pytest.raises(AgentError, match="no 'placements' message from the coordinator"):
        control.expect("placements", timeout=0.1)


@pytest.mark.parametrize(("message", "error"), [
    ({"round": 2, "devices": {"d1": [1, 2]}}, "placements for round 2, expected 1"),
    ({"round": 1, "devices": {"d9": [1, 2]}}, "exactly the devices"),
    ({"round": 1, "devices": {"d1": [1]}}, r"expected \[split_point, microbatches\]"),
    ({"round": 1, "devices": {"d1": [1, True]}}, r"expected \[split_point, microbatches\]"),
    ({"round": 1, "devices": {"d1": [4, 1]}}, "out of range"),
    ({"round": 1, "devices": {"d1": [3, 2]}}, "out of range"),     # p = L runs one batch
    ({"round": 1, "devices": {"d1": [1, 33]}}, "out of range"),
])
def test_bad_placements_are_refused_with_what_is_wrong(message, error):
    with pytest.raises(AgentError, match=error):
        placements_from({"type": "placements", **message}, 1, ["d1"], 3, 32)


def test_good_placements_are_read():
    got = placements_from({"type": "placements", "round": 1, "devices": {"d1": [3, 1],
                                                                         "d2": [0, 4]}},
                          1, ["d1", "d2"], 3, 32)
    assert got == {"d1": (3, 1), "d2": (0, 4)}


# --- measuring a round ---------------------------------------------------------------


def span(resource, host, start, end, batch=0, nbytes=0, what="x", device=None):
    e = {"type": "span", "resource": resource, "host": host, "what": what, "round": 0,
         "batch": batch, "mb": 0, "start": start, "end": end, "bytes": nbytes}
    if device:
        e["device"] = device
    return e


def test_link_rate_is_bytes_over_busy_stretches_less_half_a_round_trip_each():
    rtt = 0.2
    spans = [  # two stretches: 0-1.1 (two overlapping frames) and 2-2.6
        span("uplink", "d", 0.0, 0.6, nbytes=1000, what="activation"),
        span("uplink", "d", 0.5, 1.1, nbytes=1000, what="activation"),
        span("uplink", "d", 2.0, 2.6, nbytes=1000, what="activation"),
        span("uplink", "d", 5.0, 9.1, nbytes=10**6, what="weights"),
    ]
    got = measure_round(spans, ["d"], {"d": LinkProfile("d", "s", 1, 1, rtt, 1)})["d"]
    assert got.uplink_bps == pytest.approx((3000 + 10**6) * 8 / (1.7 + 4.1 - 3 * 0.1))
    assert got.downlink_bps is None   # nothing came down


def test_a_link_busy_mostly_with_round_trips_has_no_measured_rate():
    spans = [span("downlink", "d", k, k + 0.101, nbytes=10, what="gradient") for k in range(5)]
    got = measure_round(spans, ["d"], {"d": LinkProfile("d", "s", 1, 1, 0.2, 1)})["d"]
    assert got.downlink_bps is None


def test_compute_per_iteration_is_the_median_over_mini_batches():
    spans = [span("device.compute", "d", 0, 1, batch=0), span("device.compute", "d", 1, 2,
                                                              batch=0),
             span("device.compute", "d", 0, 3, batch=1), span("device.compute", "d", 0, 9,
                                                              batch=2),
             span("server.compute", "srv", 0, 0.5, batch=0, device="d"),
             span("server.compute", "srv", 0, 0.7, batch=1, device="d"),
             span("server.compute", "srv", 0, 5.0, batch=-1, what="eval")]
    got = measure_round(spans, ["d"], {"d": LinkProfile("d", "s", 1, 1, 0, 1)})["d"]
    assert got.device_s == 3.0          # batches took 2, 3 and 9 s
    assert got.server_s == pytest.approx(0.6)


# --- estimating and re-planning ------------------------------------------------------

DEVICES = {"pi": DEVICE}
LINKS = {"pi": link("pi", 1.0)}
KNOWN = Estimate(LINKS, {"pi": 1.0}, 1.0)


def test_what_a_round_did_not_measure_stays_as_last_known():
    known = Estimate(LINKS, {"pi": 1.7}, 2.5)
    # fl: no link use, no server work; the device's compute alone was measured
    ran = {"pi": Placement(3, 1)}
    predicted = simulate(DEVICES, SERVER, LINKS, ran, 4)["pi"].busy_s["device.compute"]
    est = estimate_fleet(DEVICES, SERVER, known, ran, {"pi": Measured(device_s=predicted)}, 4)
    assert est.device_factor["pi"] == pytest.approx(1.0)
    assert est.server_factor == 2.5 and est.links == LINKS


def test_compute_factors_are_measured_over_what_the_profile_predicts_for_what_ran():
    ran = {"pi": Placement(1, 4)}
    predicted = simulate(DEVICES, SERVER, LINKS, ran, 4)["pi"].busy_s
    measured = {"pi": Measured(device_s=2 * predicted["device.compute"],
                               server_s=0.5 * predicted["server.compute"])}
    est = estimate_fleet(DEVICES, SERVER, KNOWN, ran, measured, 4)
    assert est.device_factor["pi"] == pytest.approx(2.0)
    assert est.server_factor == pytest.approx(0.5)
    assert est.links["pi"] == LINKS["pi"]      # nothing measured: the profile's rates
    # and the scaled profiles predict what was measured
    again = simulate({"pi": scaled(DEVICE, 2.0)}, scaled(SERVER, 0.5), LINKS, ran, 4)["pi"]
    assert again.busy_s["device.compute"] == pytest.approx(2 * predicted["device.compute"])
    assert again.busy_s["server.compute"] == pytest.approx(0.5 * predicted["server.compute"])


def test_a_scheduled_rate_wins_over_what_the_round_measured():
    measured = {"pi": Measured(uplink_bps=500.0, downlink_bps=400.0)}
    est = estimate_fleet(DEVICES, SERVER, KNOWN, {"pi": Placement(1, 4)}, measured, 4,
                         scheduled={"pi": (50.0, None)})
    assert (est.links["pi"].uplink_bps, est.links["pi"].downlink_bps) == (50.0, 400.0)


# Block 0 is slow on the device and the activations after block 1 are tiny: on a fast link
# p = 1 pays (the server runs blocks 1, 2), on a slow one only p = 2 or fl avoids the link.
SLOW_FIRST = compute("pi", fwd=(1, 1, 1), bwd=(1, 1, 1), act=(64, 1, 1), input_bytes=64)


def estimate(up_bps):
    return Estimate({"pi": LinkProfile("pi", "server", up_bps, up_bps, 0.0, 1.0)},
                    {"pi": 1.0}, 1.0)


def test_a_link_that_drops_moves_the_split_point_and_says_why():
    fast, slow = estimate(1e6), estimate(100.0)
    first = replan({"pi": SLOW_FIRST}, SERVER, fast, {"pi": Placement(1, 1)}, 1, 4, 10)
    start = first.new
    assert start["pi"].split_point == 1
    dropped = replan({"pi": SLOW_FIRST}, SERVER, slow, start, 2, 4, 10, previous=fast)
    assert dropped.changed and dropped.new["pi"].split_point > 1
    assert dropped.gain >= 1.1
    assert "pi uplink" in dropped.reason and "(was 1 Mbit/s)" in dropped.reason
    event = dropped.to_event()
    assert event["old"] == {"pi": [1, start["pi"].microbatches]}
    assert event["round"] == 2 and event["estimate"]["devices"]["pi"]["uplink_bps"] == 100


def test_a_gain_within_the_tolerance_keeps_the_placement():
    fast = estimate(1e6)
    best = replan({"pi": SLOW_FIRST}, SERVER, fast, {"pi": Placement(1, 1)}, 1, 4, 10).new
    # any placement predicted less than 10% slower than the best is kept
    again = replan({"pi": SLOW_FIRST}, SERVER, fast, best, 2, 4, 10, previous=fast)
    assert not again.changed and again.new == best
    assert again.reason == "no notable change measured"
    huge = replan({"pi": SLOW_FIRST}, SERVER, fast, {"pi": Placement(1, 1)}, 1, 4, 10,
                  tolerance=100.0)
    assert not huge.changed and huge.predicted_new_s == huge.predicted_old_s


# --- the coordinator's adapter -------------------------------------------------------

def test_the_adapter_answers_every_round_and_remembers_a_scheduled_rate():
    from agents.config import DeviceSpec, RunConfig
    from edgectl.planning.plans import Constraints
    from edgectl.planning.profiling import FleetProfile
    from edgectl.runs.adapt import Adapter

    # 100 kB per sample cross split point 1: nothing on a 1 Gbit/s link, 100 s at 8 kbit/s
    big_first = compute("pi", fwd=(1, 1, 1), bwd=(1, 1, 1), act=(100_000, 1, 1),
                        input_bytes=100_000)
    fast = LinkProfile("pi", "server", 1e9, 1e9, 0.0, 1.0)
    fleet = FleetProfile({"pi": big_first}, SERVER, {"pi": fast})
    run = RunConfig(run_id="r", strategy="pipar", model="tiny", dataset="fashion-mnist",
                    devices=(DeviceSpec("pi", 1, 1),), rounds=4, batch_size=4)
    sent, events = [], []
    adapter = Adapter(run, fleet, Constraints(), 10, sent.append, events.append)

    def round_end(r, start, placement):
        adapter.on_event({"type": "round", "round": r, "start": start,
                          "placements": {"pi": placement}})

    round_end(1, 0.0, [1, 1])
    adapter.on_event({"type": "bandwidth", "time": 15.0, "devices": ["pi"], "up": "8kbit",
                      "down": "8kbit"})
    round_end(2, 10.0, sent[-1]["devices"]["pi"])   # the change came during round 2
    round_end(3, 20.0, sent[-1]["devices"]["pi"])   # round 3 measured no link at all
    round_end(4, 30.0, sent[-1]["devices"]["pi"])   # the last round: nothing to decide
    assert [m["round"] for m in sent] == [2, 3, 4]
    assert [e["round"] for e in events] == [2, 3, 4]
    dropped, after = events[1], events[2]
    assert dropped["reason"].startswith(
        "bandwidth schedule changed pi; pi uplink 8 kbit/s (was 1 Gbit/s)")
    assert dropped["estimate"]["devices"]["pi"]["uplink_bps"] == 8000
    assert after["estimate"]["devices"]["pi"]["uplink_bps"] == 8000   # still known
    assert dropped["changed"] and dropped["new"]["pi"][0] > 1   # off the slow link's p = 1


def test_the_pacer_lets_each_round_start_with_the_placements_that_ran():
    from agents.config import DeviceSpec, RunConfig
    from edgectl.runs.adapt import Pacer

    run = RunConfig(run_id="r", strategy="pipar", model="vgg5", dataset="fashion-mnist",
                    devices=(DeviceSpec("a", 2, 4), DeviceSpec("b", 1, 2)), rounds=3)
    sent = []
    pacer = Pacer(run, sent.append)
    for r in (1, 2, 3):
        pacer.on_event({"type": "round", "round": r, "placements": {"a": [2, 4],
                                                                    "b": [1, 2]}})
    pacer.on_event({"type": "span", "round": 1})
    assert sent == [{"type": "placements", "round": r, "devices": {"a": [2, 4], "b": [1, 2]}}
                    for r in (2, 3)]


def test_an_adapter_whose_planning_fails_still_answers_with_the_placements_it_had(
        monkeypatch):
    from agents.config import DeviceSpec, RunConfig
    from edgectl.planning.plans import Constraints
    from edgectl.planning.profiling import FleetProfile
    from edgectl.runs import adapt

    def broken(*args, **kwargs):
        raise RuntimeError("planner bug")
    monkeypatch.setattr(adapt, "replan", broken)
    fleet = FleetProfile({"pi": DEVICE}, SERVER, LINKS)
    run = RunConfig(run_id="r", strategy="pipar", model="tiny", dataset="fashion-mnist",
                    devices=(DeviceSpec("pi", 1, 2),), rounds=2, batch_size=4)
    sent, events = [], []
    adapt.Adapter(run, fleet, Constraints(), 10, sent.append, events.append).on_event(
        {"type": "round", "round": 1, "start": 0.0, "placements": {"pi": [1, 2]}})
    assert sent == [{"type": "placements", "round": 2, "devices": {"pi": [1, 2]}}]
    assert events[0]["error"] == "RuntimeError: planner bug" and not events[0]["changed"]
