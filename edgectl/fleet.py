"""The fleet: starting agent processes on inventory hosts and reading their streams.

One interface over transports. An `AgentProcess` is a started agent: its stdout lines (the
metric events), the tail of its stderr, and a way to stop it. The local transport runs
agents as subprocesses of this machine; the SSH transport (same interface) runs them on
remote hosts. The agent's launch line, which carries the run's secret, travels on stdin,
never on a command line, and stdin stays open: when it closes the agent exits (see
agents/__main__.py), so an agent never outlives its coordinator.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from edgectl.errors import FleetError
from edgectl.inventory import Host, Inventory

STDERR_TAIL = 40
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


class AgentProcess:
    """An agent started on a host: stdout lines, stderr tail, exit status, stop."""

    def __init__(self, host: Host, proc: subprocess.Popen):
        self.host, self.proc = host, proc
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def lines(self) -> Iterator[str]:
        """The agent's stdout, line by line, until it exits."""
        yield from self.proc.stdout

    def stderr_tail(self, n: int = 5) -> list[str]:
        self._stderr_thread.join(timeout=1.0)
        return [line for line in self._stderr if line.strip()][-n:]

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace: float = 3.0) -> None:
        """Close stdin (the agent exits by itself), then SIGTERM, then SIGKILL its group."""
        if self.proc.poll() is not None:
            return
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


def _local_python(host: Host) -> str:
    """The interpreter for a local agent: edgectl_python if set, else this one."""
    return sys.executable if host.python in ("python3", "python") else host.python


def start_local_agent(host: Host, launch_line: str) -> AgentProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [_local_python(host), "-m", "agents"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
            start_new_session=True)
    except OSError as e:
        raise FleetError(f"{host.name}: cannot start {_local_python(host)}: {e}") from e
    proc.stdin.write(launch_line)
    proc.stdin.flush()
    return AgentProcess(host, proc)


def start_agent(host: Host, launch_line: str) -> AgentProcess:
    if host.is_local:
        return start_local_agent(host, launch_line)
    raise FleetError(f"{host.name}: ansible_connection ssh is not supported yet; "
                     "use ansible_connection: local")


def agents_per_host(inventory: Inventory) -> collections.Counter:
    """How many agents of a run share each physical host (keyed by address)."""
    return collections.Counter(h.address for h in inventory.hosts)


def local_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
