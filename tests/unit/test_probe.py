"""A link probe between two real agent processes (`python -m agents`, probe mode) over
loopback: it measures both directions and never imports torch, so a probe on a 0.1-core
device starts in a few seconds instead of the half minute torch's import takes there."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from agents.config import AgentSettings, DeviceSpec, RunConfig, launch_line

SECRET = "ab" * 16


def _agent(run: RunConfig, settings: AgentSettings, trace: Path) -> subprocess.Popen:
    """An agent process, its imports traced into `trace` (-X importtime). Its stdin stays
    open until the test is done with it: an agent whose stdin closes leaves at once."""
    with trace.open("w") as err:
        agent = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "agents"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 text=True)
    agent.stdin.write(launch_line(run, settings))
    agent.stdin.flush()
    return agent


def _events_until_done(agent: subprocess.Popen) -> list[dict]:
    events = []
    for line in agent.stdout:   # a probe that hangs ends by the agents' own timeouts
        if line.startswith("{"):
            events.append(json.loads(line))
            if events[-1]["type"] in ("done", "error"):
                break
    return events


def run_agent_pair(run: RunConfig, server: AgentSettings, device: AgentSettings,
                   tmp_path: Path) -> tuple[list[dict], list[dict], dict[str, Path]]:
    """A server agent, then a device agent pointed at its port, each followed to its end:
    (server events, device events, each one's import trace)."""
    traces = {name: tmp_path / f"{name}.imports" for name in ("server", device.name)}
    server_agent, device_agent = _agent(run, server, traces["server"]), None
    try:
        listening = _first_of(server_agent, "listening")
        device_agent = _agent(run, dataclasses.replace(device, server_port=listening["port"]),
                              traces[device.name])
        return _events_until_done(server_agent), _events_until_done(device_agent), traces
    finally:
        for agent in (server_agent, device_agent):
            if agent:
                agent.stdin.close()
                agent.wait(timeout=60)


def _first_of(agent: subprocess.Popen, kind: str) -> dict:
    """The agent's first event of `kind` (an error event before it fails the test)."""
    for line in agent.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            assert event["type"] != "error", event
            if event["type"] == kind:
                return event
    raise AssertionError(f"the agent ended before its {kind} event")


def _imported(stderr: str) -> set[str]:
    """Top-level packages in an -X importtime trace."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_probe_session_measures_both_ways_without_importing_torch(tmp_path):
    run = RunConfig("probe-test", "pipar", "vgg5", "fashion-mnist", (DeviceSpec("d1"),))
    extra = {"mode": "probe", "probe_seconds": 2}
    server_events, device_events, traces = run_agent_pair(
        run, AgentSettings("server", "server", SECRET, extra=extra),
        AgentSettings("device", "d1", SECRET, extra=extra), tmp_path)
    assert [e["type"] for e in (server_events[-1], device_events[-1])] == ["done", "done"], \
        traces["server"].read_text()[-2000:]
    (link,) = [e for e in server_events if e["type"] == "link"]
    assert link["device"] == "d1" and link["uplink_bps"] > 1e7 and link["downlink_bps"] > 1e7
    for trace in traces.values():
        imported = _imported(trace.read_text())
        assert "agents" in imported and {"torch", "numpy"} & imported == set()


def test_probe_frames_grow_to_the_largest_on_a_link_that_keeps_up():
    """A socket pair keeps up with any frame: the probe's frames must grow from 16 KB to
    256 KB. They stayed at 16 KB (the growth test asked right after queueing a frame,
    before the sender thread could take it), and loopback measured 0.22 Gbit/s, not 10."""
    import socket
    import threading

    from agents import probe
    from agents.wire import Connection, MsgType

    a, b = socket.socketpair()
    sender, receiver = Connection(a, "receiver"), Connection(b, "sender")
    sizes: list[int] = []

    def receive() -> None:
        while (frame := receiver.recv(timeout=30)).type is not MsgType.PROBE_END:
            sizes.append(len(frame.raw))

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        probe.send_for(sender, 0.5)
        thread.join(30)
    finally:
        sender.close()
        receiver.close()
    assert sizes[0] == probe.MIN_CHUNK and max(sizes) == probe.CHUNK
    assert sizes.count(probe.CHUNK) > len(sizes) / 2
