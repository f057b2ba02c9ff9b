"""Hosts: commands and file transfers on one host, and operations over many of them.

`HostSession` runs a command or moves a file on a host over SSH, or locally, behind one
interface; `on_hosts` runs an operation on every host in parallel and returns a
`HostResult` per host, so one unreachable host never hides what happened on the others.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgectl.errors import EdgectlError, FleetError
from edgectl.fleet.inventory import Host


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
            from edgectl.fleet.ssh import connect
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
        from edgectl.fleet.layout import sftp_path
        if self.conn is None:
            shutil.copyfile(local, os.path.expanduser(remote))
        else:
            self.conn.put(local, sftp_path(remote))

    def get(self, remote: str, local: str) -> None:
        from edgectl.fleet.layout import sftp_path
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
