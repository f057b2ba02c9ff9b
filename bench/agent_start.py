"""Benchmark: how long an agent takes from process start to ready, on this host.

    PYTHONPATH=. python3 bench/agent_start.py --data-dir DIR [--dataset cifar10]

Starts a server agent and two device agents exactly as the local fleet does (`python -m
agents`, the launch line on stdin, one torch thread each) for a one-mini-batch fl run,
and times, from each process's start on this side:

    server  until it is ready to train: its "ready" event when it sends one (it loaded
            its model and test set), else its "listening" event
    device  until the server admitted it ("joined"): it loaded its shard, built and
            warmed its model and authenticated

Devices start once the server listens, as the coordinator starts them. Also printed: the
CPU seconds each agent had used by its own "ready" event, which a loaded or CPU-capped host
does not inflate. Also used by bench/floor.py, which prints the same lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.config import AgentSettings, DeviceSpec, RunConfig, launch_line  # noqa: E402


def start(settings: AgentSettings, run: RunConfig, events: queue.Queue) -> subprocess.Popen:
    """Start one agent; its events go to `events` as (name, arrival time, event)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agents"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True)
    proc.stdin.write(launch_line(run, settings))
    proc.stdin.flush()

    def pump() -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") == "ready":   # the CPU time it took to get there
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(proc.pid).cpu_times()
                    event["cpu_s"] = times.user + times.system
            events.put((settings.name, time.monotonic(), event))
        events.put((settings.name, time.monotonic(), {"type": "exit"}))

    threading.Thread(target=pump, daemon=True).start()
    return proc


def _wait_for(events: queue.Queue, seen: list, done, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done(seen):
        seen.append(events.get(timeout=max(deadline - time.monotonic(), 0.01)))


def measure_agent_start(data_dir: str, batch_size: int = 100, dataset: str = "cifar10") -> dict:
    """Seconds from process start to ready, per agent; printed as it goes."""
    run = RunConfig(run_id="start-probe", strategy="fl", model="vgg5", dataset=dataset,
                    devices=(DeviceSpec("d1"), DeviceSpec("d2")), data_dir=data_dir,
                    batch_size=batch_size, max_batches=1, eval_samples=100)
    secret, events, seen = secrets.token_hex(32), queue.Queue(), []
    t_server = time.monotonic()
    procs = [start(AgentSettings("server", "server", secret, threads=1), run, events)]
    _wait_for(events, seen, lambda s: any(e["type"] in ("listening", "exit") for _, _, e in s))
    port = next(e["port"] for _, _, e in seen if e["type"] == "listening")
    t_devices = time.monotonic()
    for name in ("d1", "d2"):
        procs.append(start(AgentSettings("device", name, secret, server_port=port, threads=1),
                           run, events))
    _wait_for(events, seen, lambda s: sum(e["type"] == "exit" for _, _, e in s) == 3)
    for proc in procs:
        proc.stdin.close()
        proc.wait(10)
    return _report(seen, t_server, t_devices)


def _report(seen: list, t_server: float, t_devices: float) -> dict:
    server = {e["type"]: t for name, t, e in seen if name == "server"}
    starts = {"server": server.get("ready", server["listening"]) - t_server}
    for name, t, e in seen:
        if name == "server" and e["type"] == "joined":
            starts[e["device"]] = t - t_devices
    cpu = {name: e["cpu_s"] for name, _, e in seen if e["type"] == "ready" and "cpu_s" in e}
    print("agent start (process start to ready): " +
          ", ".join(f"{name} {s:.2f} s" for name, s in starts.items()) +
          "; CPU used by then: " + ", ".join(f"{name} {s:.2f} s" for name, s in cpu.items()),
          flush=True)
    return starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for _ in range(args.repeats):
        measure_agent_start(args.data_dir, dataset=args.dataset)


if __name__ == "__main__":
    main()
