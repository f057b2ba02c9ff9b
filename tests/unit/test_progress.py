"""Progress of profiling: the time-left estimate, the lines shown, and the callback hearing
a real `python -m profiles.compute` on this host and a whole profile_fleet (with the
measurements themselves stubbed)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from edgectl.cli.common import ProgressLines
from edgectl.fleet.hosts import HostSession, _LineWriter
from edgectl.fleet.inventory import local_fleet
from edgectl.planning import profiling
from edgectl.planning.profiling import ProfileRequest, measure_host, profile_fleet
from edgectl.planning.progress import Progress, StepClock, time_left
from edgectl.planning.store import ProfileStore


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_time_left_is_the_pace_so_far():
    assert time_left(10.0, 5, 20) == pytest.approx(30.0)
    assert time_left(10.0, 0, 20) is None and time_left(3.0, 4, 4) == 0.0


def test_step_clock_paces_a_part_from_its_first_unit_then_averages_the_parts_done():
    clock = FakeClock()
    step = StepClock(3, now=clock)
    assert step.left_s() is None                      # nothing to go by yet
    clock.t += 3                                      # starting up: no measure of the pace
    assert step.left_s(1, 10) is None
    clock.t += 2
    assert step.left_s(3, 10) == pytest.approx(7 + 12 * 2)   # 1 s a unit; 12 s a host
    clock.t += 7
    step.end_part()                                   # the host took 12 s
    step.start_part()
    assert step.left_s() == pytest.approx(12 + 12)    # two hosts left at the first one's pace
    clock.t += 4
    assert step.left_s(1, 10) == pytest.approx(8 + 12)
    clock.t += 4
    assert step.left_s(5, 10) == pytest.approx(5 + 12)   # 1 s a unit from the first unit on


def test_progress_says_the_host_the_step_and_the_time_left():
    assert Progress("compute", "device1", 2, 3, 12, 31, 75.4).describe() == \
        "profiling compute on device1 (host 2/3): 12/31 block timings, about 75 s left"
    assert Progress("compute", "server", 1, 3).describe() == \
        "profiling compute on server (host 1/3): starting"
    assert Progress("compute", "pi", 1, 1, 0, 0, None, "again: its timings were noisy") \
        .describe() == "profiling compute on pi (host 1/1): starting (again: its timings " \
        "were noisy)"
    assert Progress("links", "device1", done=1, total=2, left_s=130).describe() == \
        "profiling links of 2 device(s): 1/2 probed, device1 done, about 2 min 10 s left"
    assert Progress("calibration", "server", 2, 3, left_s=12, note="p=4 N=4").describe() == \
        "calibrating: run 2/3 (p=4 N=4), about 12 s left"


def test_progress_lines_show_each_hosts_start_and_end_and_little_between(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("edgectl.cli.common.time.monotonic", clock)
    buffer = io.StringIO()
    lines = ProgressLines(Console(file=buffer, width=200), every_s=5.0)
    for done in range(0, 11):
        lines(Progress("compute", "server", 1, 2, done, 10 if done else 0, None))
        clock.t += 1
    lines(Progress("compute", "device1", 2, 2, 0, 0, None))
    shown = buffer.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in shown] == [
        "starting", "5/10 block timings", "10/10 block timings", "starting"]
    assert shown[-1].startswith("profiling compute on device1 (host 2/2)")


def test_stderr_lines_stream_from_a_local_command_and_through_fabrics_writer():
    heard = []
    with HostSession(local_fleet().server) as session:
        result = session.run("read x; echo $x; echo one >&2; echo two >&2; exit 4", "hi\n",
                             on_stderr_line=heard.append)
    assert (result.code, result.stdout, result.stderr, heard) == \
        (4, "hi\n", "one\ntwo\n", ["one", "two"])
    writer, got = _LineWriter(heard.clear() or heard.append), heard
    for chunk in ('{"progr', 'ess": 1}\nnext', " line\n", "partial"):
        writer.write(chunk)
    assert got == ['{"progress": 1}', "next line"]


def test_measure_host_hears_every_block_timing_of_the_real_profiler():
    fleet = local_fleet()
    heard = []
    req = ProfileRequest("vgg5", (1, 28, 28), 10, 2, min_time_s=0.005, repeats=1)
    record = measure_host(fleet.devices[0], fleet, req,
                          on_timings=lambda done, total: heard.append((done, total)))
    assert record.batch_sizes == (1, 2)
    assert heard == [(k, 11) for k in range(1, 12)]   # 5 blocks x 2 sizes + the step


def test_profile_fleet_tells_which_host_which_step_and_how_long(tmp_path, monkeypatch):
    fleet = local_fleet()
    req = ProfileRequest("vgg5", (1, 28, 28), 10, 2, min_time_s=0.005, repeats=1)
    real = measure_host(fleet.server, fleet, req)

    def fake_measure(host, inventory, request, on_timings=None):
        for done in range(1, 4):
            on_timings(done, 3)
        return real.__class__.from_json({**real.to_json(), "host": host.name})

    def fake_probe(inventory, request, on_progress):
        on_progress(Progress("links", total=2, left_s=8.0))
        return {}

    probed_tasks = []

    def fake_tasks(inventory, request, num_blocks, on_progress):
        probed_tasks.append(num_blocks)
        on_progress(Progress("tasks", total=2))
        return {"device1": 0.0015, "device2": 0.0012}

    monkeypatch.setattr(profiling, "measure_host", fake_measure)
    monkeypatch.setattr(profiling, "probe_links", fake_probe)
    monkeypatch.setattr(profiling, "probe_tasks", fake_tasks)
    store = ProfileStore.open(str(tmp_path), fleet.digest())
    store.save_compute(real, req.batch_size)           # the server's is stored: not measured
    heard: list[Progress] = []
    profile_fleet(fleet, req, store, link_label=lambda host: "", on_progress=heard.append)
    compute = [(p.host, p.part, p.parts, p.done, p.total) for p in heard
               if p.step == "compute"]
    assert compute == [("device1", 1, 2, 0, 0), ("device1", 1, 2, 1, 3), ("device1", 1, 2, 2, 3),
                       ("device1", 1, 2, 3, 3), ("device2", 2, 2, 0, 0), ("device2", 2, 2, 1, 3),
                       ("device2", 2, 2, 2, 3), ("device2", 2, 2, 3, 3)]
    left = [p.left_s for p in heard if p.step == "compute"]
    assert left[:2] == [None, None]           # nothing to pace from before a second timing
    assert all(s is not None and s >= 0 for s in left[2:])
    assert left[3] > 0 and left[-1] == 0     # device2 still to come; then nothing
    assert heard[-2].step == "links" and heard[-2].left_s == 8.0
    assert heard[-1].step == "tasks" and probed_tasks == [5]   # vgg5's blocks
    # the task probe's figures are kept with each device's compute profile, and reused
    stored = {h.name: store.load_compute(h.name, "vgg5", (1, 28, 28), 2) for h in fleet.devices}
    assert {n: p.agent_task_cpu_s for n, p in stored.items()} == {"device1": 0.0015,
                                                                  "device2": 0.0012}
    profile_fleet(fleet, req, store, link_label=lambda host: "")
    assert probed_tasks == [5]
