"""Summaries from hand-made events with known answers."""

from __future__ import annotations

import pytest

from edgectl.runs.summary import summarize, union_length


def span(host, resource, start, end, what="x", nbytes=0):
    return {"type": "span", "host": host, "resource": resource, "what": what, "round": 0,
            "batch": 0, "mb": 0, "start": start, "end": end, "bytes": nbytes}


def test_union_length_counts_overlaps_once():
    assert union_length([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4.0)
    assert union_length([]) == 0.0
    assert union_length([(0, 1), (1, 2)]) == pytest.approx(2.0)


def test_summary_busy_idle_efficiency_and_bytes():
    events = [
        span("d1", "device.compute", 100.0, 104.0),
        span("d1", "device.compute", 103.0, 106.0),          # overlaps: busy 6 s
        span("d1", "uplink", 101.0, 102.0, "activation", 1000),
        span("d1", "downlink", 104.0, 104.5, "gradient", 500),
        span("server", "server.compute", 102.0, 105.0),
        span("server", "server.compute", 111.0, 112.0, what="eval"),  # not training
        span("d1", "device.compute", 90.0, 95.0),            # outside the round: clipped away
        {"type": "progress", "host": "d1", "round": 0, "batch": 4, "batches": 4},
        {"type": "round", "host": "server", "round": 0, "loss": 1.0, "test_loss": 1.1,
         "accuracy": 0.5, "samples": 128, "train_s": 10.0, "eval_s": 2.0, "start": 100.0,
         "end": 112.0},
    ]
    s = summarize(events)
    by = {(r.host, r.resource): r for r in s.resources}
    assert by[("d1", "device.compute")].busy_s == pytest.approx(6.0)
    assert by[("d1", "device.compute")].idle_s == pytest.approx(4.0)
    assert by[("server", "server.compute")].busy_s == pytest.approx(3.0)
    assert s.train_s == pytest.approx(10.0)
    assert s.iteration_s == pytest.approx(2.5)
    assert s.pipeline_efficiency == pytest.approx(0.6)
    assert s.bottleneck == "d1 device.compute"
    assert s.bytes_up == {"d1": 1000} and s.bytes_down == {"d1": 500}
    assert s.rounds[0].wall_s == pytest.approx(12.0)


def test_the_prediction_follows_each_rounds_plan_over_its_mini_batches():
    from edgectl.planning.plans import Plan
    from edgectl.runs.runner import predicted_iteration

    plan = Plan("vgg5", 5, 32, 10, (), 0.5, 6.0, 8.0, 9.0, 1.3, 1.5, 0.1, "uplink")
    rounds = [{"type": "round", "round": r} for r in range(4)]
    assert predicted_iteration(plan, rounds) == pytest.approx(0.6)     # round_s / batches
    replans = [{"type": "replan", "round": 2, "predicted_new_round_s": 2.0},
               {"type": "replan", "round": 1, "error": "no estimate"}]
    # rounds 0 and 1 as planned (6 s), 2 and 3 as re-planned (2 s): 16 s / 4 / 10
    assert predicted_iteration(plan, rounds + replans) == pytest.approx(0.4)
    assert predicted_iteration(None, rounds) is None
