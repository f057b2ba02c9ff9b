"""Agent processes: agents started on inventory hosts, and their output streams.

One interface over transports. An `AgentProcess` is a started agent: its stdout lines (the
metric events), the tail of its stderr, and a way to stop it. The local transport runs
agents as subprocesses of this machine; the SSH transport (same interface) runs them on
remote hosts. The agent's launch line, which carries the run's secret, travels on stdin,
never on a command line, and stdin stays open: it carries control messages (`send`,
agents.control), and when it closes the agent exits, so an agent never outlives its
coordinator.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator

from edgectl.errors import FleetError
from edgectl.fleet.inventory import Host, Inventory
from edgectl.fleet.layout import PROJECT_ROOT, agent_command, local_python

STDERR_TAIL = 40


class AgentProcess:
    """An agent started on a host: stdout lines, stderr tail, exit status, stop.

    Subclasses give the transport: `_stdout`/`_stderr` (text line iterables), `poll`,
    `wait`, `_write` (text to its stdin) and `_terminate`.
    """

    def __init__(self, host: Host):
        self.host = host
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        for line in self._stderr():
            self._stderr_tail.append(line.rstrip("\n"))

    def lines(self) -> Iterator[str]:
        """The agent's stdout, line by line, until it exits."""
        yield from self._stdout()

    def stderr_tail(self, n: int = 5) -> list[str]:
        self._stderr_thread.join(timeout=1.0)
        return [line for line in self._stderr_tail if line.strip()][-n:]

    def stop(self, grace: float = 3.0) -> None:
        if self.poll() is None:
            self._terminate(grace)

    def send(self, message: dict) -> None:
        """A control message on the agent's stdin (agents.control), one JSON line."""
        try:
            self._write(json.dumps(message, separators=(",", ":")) + "\n")
        except (OSError, ValueError, EOFError) as e:   # it exited, or its channel closed
            raise FleetError(f"{self.host.name}: cannot send to the agent: {e}") from e


class LocalAgent(AgentProcess):
    def __init__(self, host: Host, proc: subprocess.Popen):
        self.proc = proc
        super().__init__(host)

    def _stdout(self):
        return self.proc.stdout

    def _stderr(self):
        return self.proc.stderr

    def _write(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _terminate(self, grace: float) -> None:
        """Close stdin (the agent exits by itself), then SIGTERM, then SIGKILL its group."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.wait(grace) is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
        self.wait(grace)


class SshAgent(AgentProcess):
    """An agent on a remote host, run in an SSH session whose stdin it watches."""

    def __init__(self, host: Host, conn, channel):
        self.conn, self.channel = conn, channel
        super().__init__(host)

    def _stdout(self):
        return self.channel.makefile("r")

    def _stderr(self):
        return self.channel.makefile_stderr("r")

    def _write(self, text: str) -> None:
        self.channel.sendall(text.encode())

    def poll(self) -> int | None:
        return self.channel.recv_exit_status() if self.channel.exit_status_ready() else None

    def wait(self, timeout: float | None = None) -> int | None:
        if not self.channel.status_event.wait(timeout):
            return None
        return self.channel.recv_exit_status()

    def _terminate(self, grace: float) -> None:
        """Closing the session closes the agent's stdin, on which it exits."""
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()
        self.wait(grace)
        self.channel.close()
        self.conn.close()


def start_local_agent(host: Host, launch_line: str) -> AgentProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [local_python(host), "-m", "agents"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
            start_new_session=True)
    except OSError as e:
        raise FleetError(f"{host.name}: cannot start {local_python(host)}: {e}") from e
    proc.stdin.write(launch_line)
    proc.stdin.flush()
    return LocalAgent(host, proc)


def start_ssh_agent(host: Host, launch_line: str) -> AgentProcess:
    """Run `python -m agents` in the host's provisioned venv over an SSH session."""
    from edgectl.fleet.ssh import connect

    conn = connect(host)
    channel = conn.client.get_transport().open_session()
    channel.exec_command(agent_command(host))
    channel.sendall(launch_line.encode())
    return SshAgent(host, conn, channel)


def start_agent(host: Host, launch_line: str) -> AgentProcess:
    if host.is_local:
        return start_local_agent(host, launch_line)
    return start_ssh_agent(host, launch_line)


def agents_per_host(inventory: Inventory) -> collections.Counter:
    """How many agents of a run share each physical host (keyed by address)."""
    return collections.Counter(h.address for h in inventory.hosts)
