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
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgectl.errors import EdgectlError, FleetError
from edgectl.inventory import Host, Inventory

STDERR_TAIL = 40
PROJECT_ROOT = Path(__file__).resolve().parent.parent   # this checkout, where local agents run


class AgentProcess:
    """An agent started on a host: stdout lines, stderr tail, exit status, stop.

    Subclasses give the transport: `_stdout`/`_stderr` (text line iterables), `poll`,
    `wait` and `_terminate`.
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


class LocalAgent(AgentProcess):
    def __init__(self, host: Host, proc: subprocess.Popen):
        self.proc = proc
        super().__init__(host)

    def _stdout(self):
        return self.proc.stdout

    def _stderr(self):
        return self.proc.stderr

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


def local_python(host: Host) -> str:
    """The interpreter for a local agent: edgectl_python if set, else this one."""
    return sys.executable if host.python in ("python3", "python") else host.python


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
    from edgectl.provision import agent_command
    from edgectl.ssh import connect

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



@dataclass(frozen=True)
class CommandResult:
    code: int
    stdout: str
    stderr: str


class HostSession:
    """Commands and file transfers on one host, over SSH or locally, behind one interface."""

    def __init__(self, host: Host):
        self.host = host
        self.conn = None
        if not host.is_local:
            from edgectl.ssh import connect
            self.conn = connect(host)

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()

    def run(self, command: str, stdin: str | None = None, timeout: float = 600) -> CommandResult:
        if self.conn is None:
            proc = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True,
                                  text=True, timeout=timeout)
            return CommandResult(proc.returncode, proc.stdout, proc.stderr)
        result = self.conn.run(command, hide=True, warn=True, timeout=timeout,
                               in_stream=io.StringIO(stdin) if stdin is not None else False)
        return CommandResult(result.exited, result.stdout, result.stderr)

    def check(self, command: str, what: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; a failure names the host, the step and stderr."""
        result = self.run(command, stdin)
        if result.code != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["?"]
            raise FleetError(f"{self.host.name}: {what} failed (exit {result.code}): {last[0]}")
        return result.stdout

    def put(self, local: str, remote: str) -> None:
        from edgectl.ssh import sftp_path
        if self.conn is None:
            shutil.copyfile(local, os.path.expanduser(remote))
        else:
            self.conn.put(local, sftp_path(remote))

    def get(self, remote: str, local: str) -> None:
        from edgectl.ssh import sftp_path
        if self.conn is None:
            shutil.copyfile(os.path.expanduser(remote), local)
        else:
            self.conn.get(sftp_path(remote), local)


@dataclass(frozen=True)
class HostResult:
    """What an operation did on one host: a value, or the one-line error that stopped it."""

    host: Host
    value: object = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def on_hosts(hosts: Sequence[Host], operation: Callable[[Host], object]) -> list[HostResult]:
    """Run `operation` on every host in parallel; one host's failure never hides another's."""
    def attempt(host: Host) -> HostResult:
        try:
            return HostResult(host, value=operation(host))
        except EdgectlError as e:
            return HostResult(host, error=str(e))
        except Exception as e:  # an unexpected failure on one host must not hide the rest
            return HostResult(host, error=f"{type(e).__name__}: {e}")

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return list(pool.map(attempt, hosts))
