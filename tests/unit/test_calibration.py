"""The agents' overheads: the server's fitted from a calibration run's spans, the devices'
from the CPU time their progress events report."""

from __future__ import annotations

import dataclasses

import pytest

from edgectl.errors import FleetError
from edgectl.planning.calibration import (
    WARM_UP_BATCHES,
    calibrated_device,
    device_cpu_excess,
    fit_devices,
    fit_overheads,
    reference_placements,
    server_task_times,
    service_excess,
)
from edgectl.planning.planner import Placement, simulate
from tests.unit.test_planner import DEVICE, SERVER, link

PLACEMENT = Placement(1, 2)  # batch 4: two micro-batches of 2, 2 s each on SERVER


def span(resource, what, host, batch, mb, start, end, device=None):
    extra = {"device": device} if device else {}
    return {"type": "span", "resource": resource, "what": what, "host": host,
            "batch": batch, "mb": mb, "start": start, "end": end, **extra}


def rounded(points):
    return [(nbytes, round(seconds, 9)) for nbytes, seconds in points]


def batch_events(batch, excess, device="pi"):
    """One mini-batch: mb0 arrives at T and is served by T + 2 + excess; mb1 arrives while
    mb0 runs, so its service starts when mb0 ends. Both spans start late by 0.5 s (the
    loop's own overhead), which counts."""
    t = 100.0 * batch
    end0 = t + 2 + excess
    return [span("uplink", "activation", device, batch, 0, t - 1, t),
            span("server.compute", "train", "server", batch, 0, t + 0.5, end0, device),
            span("uplink", "activation", device, batch, 1, t, t + 1),
            span("server.compute", "train", "server", batch, 1, end0 + 0.5,
                 end0 + 2 + excess, device)]


def test_each_task_gives_its_bytes_and_its_service_time_over_the_profiled_time():
    # 2 samples of 8-byte activations: 2 * (8 + 8 label bytes) up, 2 * 8 down
    assert server_task_times(SERVER, PLACEMENT, 4) == [(2.0, 48), (2.0, 48)]
    events = [e for b in range(WARM_UP_BATCHES) for e in batch_events(b, excess=10.0)]
    events += batch_events(2, excess=1.0) + batch_events(3, excess=2.0)
    events.append({"type": "progress", "host": "pi", "round": 1, "batch": 4})
    points = service_excess(events, SERVER, {"pi": PLACEMENT}, 4)
    assert rounded(points) == [(48, 1.0), (48, 1.0), (48, 2.0), (48, 2.0)]  # no warm-up


def test_waiting_for_an_activation_is_not_overhead():
    # mb1 arrives 50 s after mb0 ended: its service time starts at its arrival
    events = []
    for b in range(WARM_UP_BATCHES + 1):
        t = 100.0 * b
        events += [span("uplink", "activation", "pi", b, 0, t - 1, t),
                   span("server.compute", "train", "server", b, 0, t, t + 3, "pi"),
                   span("uplink", "activation", "pi", b, 1, t + 50, t + 53),
                   span("server.compute", "train", "server", b, 1, t + 53, t + 56, "pi")]
    assert rounded(service_excess(events, SERVER, {"pi": PLACEMENT}, 4)) == [(48, 1.0),
                                                                              (48, 1.0)]


@pytest.mark.parametrize(("points", "expected"), [
    ([(0, 3.0), (100, 4.0), (0, 3.0), (100, 4.0)], (3.0, 0.01)),  # the line through them
    ([(0, 3.0), (100, 2.0)], (2.5, 0.0)),                          # falling: the mean
    ([(50, 1.0), (50, 2.0)], (1.5, 0.0)),                          # one size: the mean
])
def test_the_overheads_are_a_least_squares_line_never_falling(points, expected):
    assert fit_overheads(points) == pytest.approx(expected)


def test_the_calibrated_plan_predicts_what_the_calibration_run_took():
    """Fit on a run whose every server task took 1 s more; the calibrated model then
    predicts that run's server time: the fit and the planner agree on what a task is."""
    events = [e for b in range(WARM_UP_BATCHES + 2) for e in batch_events(b, excess=1.0)]
    per_task, per_byte = fit_overheads(service_excess(events, SERVER, {"pi": PLACEMENT}, 4))
    server = dataclasses.replace(SERVER, task_overhead_s=per_task, byte_overhead_s=per_byte)
    predicted = simulate({"pi": DEVICE}, server, {"pi": link("pi")}, {"pi": PLACEMENT}, 4)
    assert predicted["pi"].busy_s["server.compute"] == pytest.approx(2 * (2.0 + 1.0))


def test_a_run_too_short_to_measure_is_one_clear_error():
    points = service_excess(batch_events(0, excess=1.0), SERVER, {"pi": PLACEMENT}, 4)
    with pytest.raises(FleetError, match="no server task after the first 2 mini-batches"):
        fit_overheads(points)


@pytest.mark.parametrize(("blocks", "batch", "expected"), [
    (5, 32, (Placement(2, 4), Placement(4, 4), Placement(1, 4))),
    (10, 32, (Placement(5, 4), Placement(9, 4), Placement(1, 4))),
    (2, 32, (Placement(1, 4),)),
    (1, 2, ()),  # one block: no placement keeps raw data on the device and uses the server
])
def test_the_reference_placements_move_different_bytes(blocks, batch, expected):
    assert reference_placements(blocks, batch) == expected


# --- the devices: their agents' CPU beyond the profiled compute ---------------------------

QUARTER_CORE = dataclasses.replace(DEVICE, cpu={"cores": 2, "quota": 0.25})


def progress(cpu_by_batch, host="pi"):
    return [{"type": "progress", "host": host, "round": 1, "batch": b, "batches": 4,
             "cpu_s": cpu} for b, cpu in cpu_by_batch.items()]


def test_a_devices_point_is_its_cpu_per_task_beyond_the_profiled_compute():
    # p=1 N=2 at batch 4 on DEVICE: forwards and backwards of 2 samples, 2 s each: 8 s of
    # compute per mini-batch, 2 CPU-s at a quarter core; the agent used 3 CPU-s per mini-batch
    # after the warm-up (batches 3 and 4), so 1 CPU-s over 4 tasks is overhead. Moved per
    # mini-batch: 4 samples * (8 up + 8 label bytes + 8 back) over 4 tasks.
    events = progress({1: 40.0, 2: 50.0, 3: 53.0, 4: 56.0})
    events += progress({2: 999.0, 4: 0.0}, host="other")    # another device's: not counted
    assert device_cpu_excess(events, "pi", QUARTER_CORE, PLACEMENT, 4) == pytest.approx(
        (24.0, 0.25))


def test_a_device_without_cpu_past_the_warm_up_gives_no_point():
    assert device_cpu_excess(progress({1: 1.0, 2: 2.0}), "pi", DEVICE, PLACEMENT, 4) is None
    old_agent = [{"type": "progress", "host": "pi", "round": 1, "batch": b, "batches": 4}
                 for b in range(1, 5)]
    assert device_cpu_excess(old_agent, "pi", DEVICE, PLACEMENT, 4) is None
    with pytest.raises(FleetError, match="device pi reported no CPU time after the first 2"):
        fit_devices({"pi": []}, {"pi": DEVICE}, batches=4)


def test_a_calibrated_device_is_predicted_as_busy_as_its_calibration_run_was():
    """Fitted on a quarter-core device whose agent used 0.25 CPU-s per task beyond its
    compute: each of its 4 tasks takes 1 s more of its throttled time, so the model's
    device busy time is the profiled 8 s plus 4 s, at any placement's bytes alike."""
    point = device_cpu_excess(progress({2: 50.0, 4: 56.0}), "pi", QUARTER_CORE, PLACEMENT, 4)
    (overheads,) = fit_devices({"pi": [point]}, {"pi": QUARTER_CORE}, batches=4).values()
    assert (overheads.cores, overheads.batches) == (0.25, 2)
    device = calibrated_device(QUARTER_CORE, overheads)
    predicted = simulate({"pi": device}, SERVER, {"pi": link("pi")}, {"pi": PLACEMENT}, 4)
    assert predicted["pi"].busy_s["device.compute"] == pytest.approx(8.0 + 4 * 1.0)
