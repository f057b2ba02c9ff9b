"""Orchestrating one training run: start the agents, follow their streams, keep the record.

`train` starts the server agent, learns its port from its "listening" event, starts every
device agent pointed at it, and then merges all agents' event streams into the run record
and a callback (the live view). The run ends when every agent has exited. If one agent
fails (non-zero exit or an "error" event), every other agent is stopped and `RunFailed`
names the host and its last stderr lines. Ctrl-C stops everything too. Either way no agent
process is left behind and run.json says how the run ended.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents.config import AgentSettings, DeviceSpec, RunConfig, launch_line
from agents.strategies import get_strategy
from edgectl.errors import DataError, EdgectlError, FleetError, RunFailed
from edgectl.fleet import (
    AgentProcess,
    HostSession,
    agents_per_host,
    local_cores,
    on_hosts,
    start_agent,
)
from edgectl.inventory import Host, Inventory
from edgectl.records import RunRecord, new_run_id, read_events
from edgectl.summary import Summary, summarize
from edgectl.train_options import TrainOptions

LISTEN_TIMEOUT = 120.0
EventCallback = Callable[[dict], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: str
    summary: Summary


def build_run_config(options: TrainOptions, inventory: Inventory, run_id: str) -> RunConfig:
    """The run config for every agent, with each device's split point and micro-batch
    count resolved by the strategy, so run.json records what actually ran."""
    from partitions.zoo import build_model

    strategy = get_strategy(options.strategy)
    blocks = build_model(options.model, (3, 32, 32), 10).num_blocks  # L is shape-independent
    devices = []
    for host in inventory.devices:
        asked = DeviceSpec(host.name, options.split_point, options.microbatches)
        placed = strategy.place(asked, blocks, options.batch_size)
        devices.append(DeviceSpec(host.name, placed.split_point, placed.microbatches))
    fields = {k: v for k, v in options.as_run_fields().items()
              if k not in ("split_point", "microbatches")}
    return RunConfig(run_id=run_id, devices=tuple(devices), **fields)


def _threads_for(host: Host, inventory: Inventory) -> int:
    """Local agents share this machine's cores; remote ones use what their host owns."""
    if not host.is_local:
        return 0
    return max(1, local_cores() // agents_per_host(inventory)[host.address])


class _Streams:
    """Merges every agent's stdout into one queue of (agent, event-or-None)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def follow(self, agent: AgentProcess) -> None:
        def pump() -> None:
            for line in agent.lines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not an event (a stray print); the stderr tail keeps logs
                if isinstance(event, dict):
                    self.queue.put((agent, event))
            self.queue.put((agent, None))

        threading.Thread(target=pump, daemon=True, name=f"events-{agent.host.name}").start()


def _failure(agent: AgentProcess, event: dict | None = None) -> RunFailed | DataError:
    """The error for a failed agent: its own message if it sent one, else its stderr tail."""
    if event is not None:
        kind = DataError if event.get("kind") == "data" else RunFailed
        return kind(f"{agent.host.name}: {event.get('message')}")
    code = agent.wait(5)
    tail = " | ".join(agent.stderr_tail(3)) or "no stderr output"
    return RunFailed(f"{agent.host.name}: agent exited with code {code}; last stderr: {tail}")


class _Run:
    def __init__(self, run: RunConfig, inventory: Inventory, record: RunRecord,
                 on_event: EventCallback):
        self.run, self.inventory, self.record, self.on_event = run, inventory, record, on_event
        self.secret = secrets.token_hex(32)
        self.streams = _Streams()
        self.agents: list[AgentProcess] = []

    def _start(self, host: Host, settings: AgentSettings) -> AgentProcess:
        return self._follow(start_agent(host, launch_line(self.run, settings)))

    def _follow(self, agent: AgentProcess) -> AgentProcess:
        self.agents.append(agent)
        self.streams.follow(agent)
        return agent

    def _record(self, event: dict) -> None:
        self.record.append(event)
        self.on_event(event)

    def start_server(self) -> int:
        host = self.inventory.server
        settings = AgentSettings(
            "server", host.name, self.secret, bind_host="127.0.0.1" if host.is_local else "0.0.0.0",
            threads=_threads_for(host, self.inventory), model_out=self.server_model_path(),
            data_dir=host.data_dir)
        server = self._start(host, settings)
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                agent, event = self.streams.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if event is None:
                raise _failure(agent)
            self._record(event)
            if event["type"] == "error":
                raise _failure(agent, event)
            if event["type"] == "listening":
                return int(event["port"])
        server.stop()
        raise RunFailed(f"{host.name}: server agent did not listen within {LISTEN_TIMEOUT:.0f} s")

    def start_devices(self, port: int) -> None:
        """Start every device agent at once (SSH logins take a while each); every agent that
        did start is followed, so a failure to start one still stops the others."""
        server = self.inventory.server

        def launch(host: Host) -> AgentProcess:
            address = "127.0.0.1" if host.is_local and server.is_local else server.address
            return start_agent(host, launch_line(self.run, AgentSettings(
                "device", host.name, self.secret, server_host=address, server_port=port,
                data_dir=host.data_dir, threads=_threads_for(host, self.inventory))))

        results = on_hosts(self.inventory.devices, launch)
        for result in results:
            if result.ok:
                self._follow(result.value)
        failed = [r for r in results if not r.ok]
        if failed:
            raise FleetError(failed[0].error)

    def follow_until_done(self) -> None:
        running = set(self.agents)
        while running:
            agent, event = self.streams.queue.get()
            if event is None:
                running.discard(agent)
                if agent.wait(10) != 0:
                    raise _failure(agent)
                continue
            event.setdefault("host", agent.host.name)
            self._record(event)
            if event["type"] == "error":
                raise _failure(agent, event)

    def server_model_path(self) -> str:
        """Where the server writes the final model: the record itself, or its workdir."""
        server = self.inventory.server
        if server.is_local:
            return str(self.record.model_path)
        return f"{server.workdir.rstrip('/')}/runs/{self.run.run_id}.safetensors"

    def fetch_model(self) -> None:
        """Copy a remote server's final model into the record (best effort, noted if not)."""
        server = self.inventory.server
        if server.is_local:
            return
        try:
            with HostSession(server) as s:
                s.get(self.server_model_path(), str(self.record.model_path))
        except (EdgectlError, OSError) as e:
            self.record.update(model_fetch_error=str(e))

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop()


def train(options: TrainOptions, inventory: Inventory, runs_dir: str, command: str,
          on_event: EventCallback = lambda e: None) -> TrainResult:
    """Run one training run on the fleet; returns the record's place and summary."""
    run_id = new_run_id(options.strategy)
    run = build_run_config(options, inventory, run_id)
    record = RunRecord(runs_dir, run_id, {
        "command": command, "config": run.to_json(), "inventory": inventory.path,
        "inventory_digest": inventory.digest(),
        "hosts": [_host_record(h) for h in inventory.hosts]})
    session = _Run(run, inventory, record, on_event)
    status, error = "failed", None
    try:
        session.start_devices(session.start_server())
        session.follow_until_done()
        session.fetch_model()
        status = "completed"
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except EdgectlError as e:
        error = str(e)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        session.stop_all()
        summary = summarize(_events_of(record))
        record.finish(status, error=error, summary=summary.to_json())
    return TrainResult(run_id, str(record.dir), summary)


def _host_record(host: Host) -> dict:
    """A host as run.json records it: how it was reached, not its extra vars (secrets)."""
    return {"name": host.name, "role": host.role, "address": host.address, "port": host.port,
            "user": host.user, "connection": host.connection}


def _events_of(record: RunRecord) -> list[dict]:
    return read_events(record.dir)


