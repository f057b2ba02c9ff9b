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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgectl.errors import EdgectlError, FleetError
from edgectl.fleet.inventory import Host

LineCallback = Callable[[str], None]


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

    def run(self, command: str, stdin: str | None = None, timeout: float = 600,
            on_stderr_line: LineCallback | None = None) -> CommandResult:
        """Run `command` to its end; `on_stderr_line` hears each stderr line as it comes
        (the result still holds all of stderr)."""
        if self.conn is None:
            return _run_local(command, stdin, timeout, on_stderr_line)
        streaming = {"hide": "stdout", "err_stream": _LineWriter(on_stderr_line)} \
            if on_stderr_line else {"hide": True}
        result = self.conn.run(command, warn=True, timeout=timeout,
                               in_stream=_AllAtOnce(stdin) if stdin is not None else False,
                               **streaming)
        return CommandResult(result.exited, result.stdout, result.stderr)

    def check(self, command: str, what: str, stdin: str | None = None,
              on_stderr_line: LineCallback | None = None) -> str:
        """Run a command that must succeed; a failure names the host, the step and stderr."""
        result = self.run(command, stdin, on_stderr_line=on_stderr_line)
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


class _AllAtOnce(io.StringIO):
    """Text for a remote command's stdin, handed over whole on the first read.

    invoke reads a stream that is not a terminal one byte per read and sleeps 10 ms between
    reads (`invoke.terminals.bytes_to_read`), so a 1 KB script took 10 s to reach the host.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read()


def _run_local(command: str, stdin: str | None, timeout: float,
               on_stderr_line: LineCallback | None) -> CommandResult:
    if on_stderr_line is None:
        proc = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True,
                              text=True, timeout=timeout)
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)
    with subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out: list[str] = []
        err: list[str] = []

        def read_stdout() -> None:
            out.append(proc.stdout.read())

        def read_stderr() -> None:
            for line in proc.stderr:
                err.append(line)
                on_stderr_line(line.rstrip("\n"))

        readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
        for reader in readers:
            reader.start()
        try:
            proc.stdin.write(stdin or "")
            proc.stdin.close()
        except BrokenPipeError:   # it ended without reading: its exit status says why
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        for reader in readers:
            reader.join()
        return CommandResult(proc.returncode, "".join(out), "".join(err))


class _LineWriter:
    """A stream for fabric's err_stream that hands on whole lines."""

    def __init__(self, on_line: LineCallback):
        self.on_line, self.partial = on_line, ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.on_line(line)

    def flush(self) -> None:
        pass


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
