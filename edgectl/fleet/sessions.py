"""Agent sessions: a run's server and device agents, started through the fleet and followed.

The server agent and the training devices' agents start together; the server's "listening"
event gives the port, which each device is then sent (`AgentSession.start`), at the
inventory's server address or loopback for a local fleet. All agents'
stdout event streams merge into one callback. The session ends when every agent has
exited, or shortly after the server finished cleanly. If one fails (non-zero exit or an
"error" event), `RunFailed` (or `DataError`) names the host with its own message or last
stderr lines; `stop_all` then stops every agent, which the caller does on success, failure
and Ctrl-C alike.

A training session may outlive its devices (`rejoin_attempts` > 0): a device agent that
ends mid-run after it joined, while the server goes on, is restarted with backoff, up to
`rejoin_attempts` times in a row, each an "agent_restart" event; the server takes it back
at its next round start. A device that never joined, or failed on its data, fails the run
as before: restarting would only fail again.

A decentralized run's churn (`churn`: (seconds after the devices start, device, "leave"
or "join"), made from an availability trace by edgectl.runs.churn) is played here: a leave
stops the device's agent (and it is not restarted), a join starts it again; each is a
"churn" event. Devices offline at the start (not in `initial`) start at their first join.
The trace's clock starts when every device online at the start has joined (agents take
seconds to load), so its times are seconds of the run proper.
Nodes of a decentralized run listen for their peers on their own address (the
inventory's, or loopback on the local fleet).
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable

from agents.config import AgentSettings, RunConfig, launch_line
from agents.strategies import get_strategy
from edgectl.errors import DataError, FleetError, RunFailed
from edgectl.fleet.agents import AgentProcess, agents_per_host, start_agent
from edgectl.fleet.hosts import on_hosts
from edgectl.fleet.inventory import Host, Inventory
from profiles.host import available_cores

LISTEN_TIMEOUT = 120.0
SETTLE_S = 1.5
DEVICES_EXIT_GRACE_S = 15.0   # after the server's clean end, for devices to take their DONE
MAX_RESTART_DELAY_S = 30.0
EventCallback = Callable[[dict], None]


def threads_for(host: Host, inventory: Inventory) -> int:
    """Local agents share this machine's cores; remote ones use what their host owns."""
    if not host.is_local:
        return 0
    return max(1, available_cores() // agents_per_host(inventory)[host.address])


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


class AgentSession:
    """A server agent and device agents of one run, started through the fleet and followed.

    `extra` goes to every agent's settings (e.g. {"mode": "probe"}); `model_out` is where
    the server writes the final model, on its own host.
    """

    def __init__(self, run: RunConfig, inventory: Inventory, on_event: EventCallback, *,
                 extra: dict | None = None, model_out: str | None = None,
                 server_settings: dict | None = None, rejoin_attempts: int = 0,
                 churn: tuple[tuple[float, str, str], ...] = (),
                 initial: set[str] | None = None):
        self.run, self.inventory, self.on_event = run, inventory, on_event
        self.extra, self.model_out = extra or {}, model_out
        self.server_settings = server_settings or {}   # more AgentSettings for the server
        self.rejoin_attempts = rejoin_attempts
        self.port = 0
        self.joined: set[str] = set()           # devices the server admitted at some point
        self.restarts: dict[str, int] = {}      # device -> restarts in a row, since it joined
        self._due: list[tuple[float, Host]] = []   # restarts waiting for their backoff
        self.secret = secrets.token_hex(32)
        self.streams = _Streams()
        self._reported: set[AgentProcess] = set()   # agents that sent an error event
        self.agents: list[AgentProcess] = []
        self.server_agent: AgentProcess | None = None
        self.churn = sorted(churn)
        self.initial = initial
        self.away: set[str] = set()             # devices the churn trace has offline now
        self._churn_due: list[tuple[float, str, str]] = []
        self.decentral = get_strategy(run.strategy).decentralized

    def _start(self, host: Host, settings: AgentSettings) -> AgentProcess:
        return self._follow(start_agent(host, launch_line(self.run, settings)))

    def _follow(self, agent: AgentProcess) -> AgentProcess:
        self.agents.append(agent)
        self.streams.follow(agent)
        return agent

    def start(self) -> int:
        """Start the server agent and every device agent; return the server's port.

        Training devices start alongside the server, before it has a port: each loads its
        shard and model and warms up while the server does the same, and is sent the port
        (a "server" control message) once the server listens. That overlap is about 2 s of
        every run's start on the local fleet. Link probes (which start in a fraction of a
        second) and decentralized nodes are started once the server listens."""
        if self.extra.get("mode") in ("probe", "tasks") or self.decentral:
            port = self.start_server()
            self.start_devices(port)
            return port
        self._spawn_server()
        self._launch_devices()
        port = self._await_listening()
        for agent in self.agents:
            if agent is not self.server_agent:
                agent.send({"type": "server", "port": port})
        return port

    def start_server(self) -> int:
        """Start the server agent and wait until it listens; return its port."""
        self._spawn_server()
        return self._await_listening()

    def _spawn_server(self) -> None:
        host = self.inventory.server
        settings = AgentSettings(
            "server", host.name, self.secret, bind_host="127.0.0.1" if host.is_local else "0.0.0.0",
            threads=threads_for(host, self.inventory), model_out=self.model_out,
            data_dir=host.data_dir, extra=self.extra, **self.server_settings)
        self.server_agent = self._start(host, settings)

    def _await_listening(self) -> int:
        """Follow every agent's events until the server says it listens; a failure of any
        agent meanwhile fails the start."""
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                agent, event = self.streams.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if event is None:
                raise _failure(agent)
            event.setdefault("host", agent.host.name)
            self.on_event(event)
            if event["type"] == "error":
                raise _failure(agent, event)
            if event["type"] == "listening" and agent is self.server_agent:
                self.port = int(event["port"])
                return self.port
        self.server_agent.stop()
        raise RunFailed(f"{self.inventory.server.name}: server agent did not listen within "
                        f"{LISTEN_TIMEOUT:.0f} s")

    def start_devices(self, port: int) -> None:
        """Start every device agent, pointed at the server's `port`."""
        self.port = port
        self._launch_devices()

    def _launch_devices(self) -> None:
        """Start every device agent at once (SSH logins take a while each), with the port
        known so far (0: the agent waits to be sent it); every agent that did start is
        followed, so a failure to start one still stops the others."""
        hosts = [h for h in self.inventory.devices
                 if self.initial is None or h.name in self.initial]
        self.away = {h.name for h in self.inventory.devices} - {h.name for h in hosts}
        results = on_hosts(hosts, self._launch_device)
        for result in results:
            if result.ok:
                self._follow(result.value)
        failed = [r for r in results if not r.ok]
        if failed:
            raise FleetError(failed[0].error)

    def _launch_device(self, host: Host) -> AgentProcess:
        server = self.inventory.server
        address = "127.0.0.1" if host.is_local and server.is_local else server.address
        extra, bind = self.extra, "127.0.0.1"
        if self.decentral:   # peers connect to it: listen where the fleet reaches it
            bind = "127.0.0.1" if host.is_local else "0.0.0.0"
            extra = {**extra, "peer_host": "127.0.0.1" if host.is_local else host.address}
        return start_agent(host, launch_line(self.run, AgentSettings(
            "device", host.name, self.secret, server_host=address, server_port=self.port,
            bind_host=bind, data_dir=host.data_dir, threads=threads_for(host, self.inventory),
            extra=extra)))

    def follow_until_done(self) -> None:
        running = set(self.agents)
        grace_until = None   # set once the server has finished cleanly
        while running or self._due:
            if grace_until is not None and time.monotonic() > grace_until:
                for agent in running:
                    agent.stop()
                return
            self._restart_due(running)
            self._play_churn(running)
            try:
                failure = self._next(running, timeout=self._wait(grace_until))
            except queue.Empty:
                continue
            if failure is not None:
                raise self._primary(failure, running)
            if grace_until is None and self.server_agent not in running \
                    and self.server_agent is not None:
                grace_until = time.monotonic() + DEVICES_EXIT_GRACE_S
                self._due.clear()   # the run is over: nothing to come back to

    def _wait(self, grace_until: float | None) -> float | None:
        """How long the next stream item may take before a restart or the grace is due."""
        due = [t for t, _ in self._due] + ([grace_until] if grace_until else []) + \
            [t for t, _, _ in self._churn_due[:1]]
        return max(min(due) - time.monotonic(), 0.0) if due else None

    def _restart_due(self, running: set) -> None:
        now = time.monotonic()
        for item in [d for d in self._due if d[0] <= now]:
            self._due.remove(item)
            host = item[1]
            try:
                agent = self._follow(self._launch_device(host))
            except FleetError as e:   # the host is unreachable now: try again, within limits
                self._lost_agent(host, f"could not start its agent: {e}")
                continue
            running.add(agent)

    def _play_churn(self, running: set) -> None:
        """Stop and start device agents as the availability trace says (module docstring)."""
        now = time.monotonic()
        if self.churn and not self._churn_due and {h.name for h in self.inventory.devices} - \
                self.away <= self.joined:   # the trace's clock starts once all have joined
            self._churn_due = [(now + at, device, action) for at, device, action in self.churn]
            self.churn = ()
        while self._churn_due and self._churn_due[0][0] <= now:
            _, name, action = self._churn_due.pop(0)
            host = next(h for h in self.inventory.devices if h.name == name)
            self.on_event({"type": "churn", "host": "coordinator", "time": time.time(),
                           "device": name, "action": action})
            if action == "leave":
                self.away.add(name)
                self._due = [d for d in self._due if d[1].name != name]
                for agent in [a for a in running if a.host.name == name]:
                    agent.stop(grace=0.5)
            elif name in self.away:
                self.away.discard(name)
                self.restarts.pop(name, None)
                try:
                    running.add(self._follow(self._launch_device(host)))
                except FleetError as e:
                    self._lost_agent(host, f"could not start its agent: {e}")

    def _run_over(self, agent: AgentProcess) -> bool:
        """A device of a session whose server finished cleanly: whatever it says now (a
        restarted agent that came back too late finds the server gone) is no failure."""
        return (self.rejoin_attempts > 0 and agent.host is not self.inventory.server
                and self.server_agent is not None and self.server_agent.poll() == 0)

    def _restartable(self, agent: AgentProcess, event: dict | None) -> bool:
        """A device that was in the run, lost while the server goes on, not for its data."""
        return (self.rejoin_attempts > 0 and agent.host is not self.inventory.server
                and agent.host.name in self.joined
                and (event is None or event.get("kind") != "data")
                and self.server_agent is not None and self.server_agent.poll() is None)

    def _lost_agent(self, host: Host, reason: str) -> None:
        """Schedule a restart of a device's agent, with backoff, or give up on it (the
        server goes on without it, as far as --min-devices allows)."""
        attempt = self.restarts.get(host.name, 0) + 1
        self.restarts[host.name] = attempt
        if attempt > self.rejoin_attempts:
            self.on_event({"type": "agent_restart", "host": "coordinator", "time": time.time(),
                           "device": host.name, "attempt": attempt, "delay_s": 0,
                           "reason": reason, "gave_up": True})
            return
        delay = min(2.0 ** (attempt - 1), MAX_RESTART_DELAY_S)
        self.on_event({"type": "agent_restart", "host": "coordinator", "time": time.time(),
                       "device": host.name, "attempt": attempt, "delay_s": delay,
                       "reason": reason})
        self._due.append((time.monotonic() + delay, host))

    def _next(self, running: set, timeout: float | None = None) -> tuple | None:
        """Handle one stream item; returns (rank, error) when it shows a failure."""
        agent, event = self.streams.queue.get(timeout=timeout)
        if event is None:   # its stream ended: an exit after its own error event is that error
            running.discard(agent)
            code = agent.wait(10)
            if code == 0 or agent in self._reported or self._run_over(agent) or \
                    agent.host.name in self.away:
                return None
            if self._restartable(agent, None):
                self._lost_agent(agent.host, f"its agent ended (exit code {code})")
                return None
            return 0, _failure(agent)
        event.setdefault("host", agent.host.name)
        self.on_event(event)
        if event["type"] in ("joined", "device_joined"):
            self.joined.add(event["device"])
        if event["type"] == "round":   # a device that trained a round is back for good
            for name in event.get("devices", ()):
                self.restarts.pop(name, None)
        if event["type"] != "error":
            return None
        self._reported.add(agent)
        if self._run_over(agent):
            return None
        if self._restartable(agent, event):
            self._lost_agent(agent.host, str(event.get("message")))
            return None
        return (1 if agent.host is self.inventory.server else 2), _failure(agent, event)

    def _primary(self, first: tuple, running: set) -> Exception:
        """One failure brings down others (a dead device makes the server and then the
        other devices report lost connections). Collect what arrives within SETTLE_S and
        report the cause: an agent that died without a word, else the server's account,
        else a device's."""
        failures = [first]
        deadline = time.monotonic() + SETTLE_S
        while running and (left := deadline - time.monotonic()) > 0:
            try:
                failure = self._next(running, timeout=left)
            except queue.Empty:
                break
            if failure is not None:
                failures.append(failure)
        return min(failures, key=lambda f: f[0])[1]

    def send_to_server(self, message: dict) -> None:
        """A control message for the server agent (agents.control)."""
        if self.server_agent is None:
            raise FleetError("the server agent has not started")
        self.server_agent.send(message)

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop()
