"""A task probe between two real agent processes (`python -m agents`, tasks mode) over
loopback: the device trains through its agent's own path (frames both ways, span events)
and through its stage alone, and the server reports both CPU times (agents.taskprobe)."""

from __future__ import annotations

import dataclasses

import pytest

from agents.config import AgentSettings, DeviceSpec, RunConfig
from agents.errors import AgentError
from agents.taskprobe import TaskProbeDevice, probe_spec
from tests.unit.test_probe import SECRET, run_agent_pair

SPEC = {"input_shape": [1, 28, 28], "num_classes": 10, "split_point": 1, "microbatches": 4,
        "batches": 4}


def test_a_task_probe_trains_through_the_agents_path_and_reports_both_cpu_times(tmp_path):
    run = RunConfig("tasks-test", "pipar", "vgg5", "fashion-mnist", (DeviceSpec("d1"),),
                    batch_size=8, lr=1e-9)
    extra = {"mode": "tasks", "tasks": SPEC}
    server_events, device_events, _ = run_agent_pair(
        run, AgentSettings("server", "server", SECRET, extra=extra),
        AgentSettings("device", "d1", SECRET, threads=1, extra=extra), tmp_path)
    assert [e["type"] for e in (server_events[-1], device_events[-1])] == ["done", "done"], \
        (server_events[-1], device_events[-1])
    (cost,) = [e for e in server_events if e["type"] == "task_cost"]
    assert cost["device"] == "d1"
    assert (cost["batches"], cost["tasks"], cost["split_point"], cost["microbatches"]) == \
        (4, 8, 1, 4)
    assert cost["stage_cpu_s"] > 0 and cost["agent_cpu_s"] > 0
    # the agent's way ran as training runs it: two warm-up batches and the four timed, each
    # with its four forwards, four gradients received and four backwards as span events
    spans = [e for e in device_events if e["type"] == "span"]
    for resource, what in (("device.compute", "forward"), ("device.compute", "backward"),
                           ("downlink", "gradient")):
        assert sum(1 for e in spans if (e["resource"], e["what"]) == (resource, what)) == 6 * 4
    assert sum(1 for e in device_events if e["type"] == "progress") == 6


@pytest.mark.parametrize("missing", sorted(SPEC))
def test_a_task_probe_without_its_settings_says_which_it_needs(missing):
    settings = AgentSettings("device", "d1", SECRET,
                             extra={"mode": "tasks",
                                    "tasks": {k: v for k, v in SPEC.items() if k != missing}})
    run = RunConfig("tasks-test", "pipar", "vgg5", "fashion-mnist", (DeviceSpec("d1"),))
    with pytest.raises(AgentError, match="task probe: settings must give input_shape, "
                                         "num_classes, split_point, microbatches, batches"):
        TaskProbeDevice(run, settings, sink=None)
    assert probe_spec(dataclasses.replace(settings, extra={"tasks": SPEC})) == SPEC
