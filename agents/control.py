"""The coordinator's channel to an agent: JSON lines on the agent's stdin.

The first line is the launch line (agents.config). The coordinator keeps stdin open for the
agent's whole life and may write control messages after it, one JSON object per line; so
far one kind, which the server of a paced run (`RunConfig.paced`) waits for:

    {"type": "placements", "round": R, "devices": {"device1": [p, N], ...},
     "pacing": {"device1": [up_bps, down_bps], ...}}

the placement of every device for round R, decided by the coordinator's re-planning after
round R - 1 (edgectl.runs.adapt), and, optionally, the rates each device's connection is
paced to from round R on (bit/s or null; a device left out keeps its rates; see
agents.config.DeviceSpec). Lines are parsed as JSON, never evaluated; a line that is
not a JSON object is ignored with a warning. When stdin closes (the coordinator exited,
crashed, or its SSH channel dropped) `on_close` runs: the agent exits at once, so no agent
outlives its run.

stdin is read from the raw file descriptor, not sys.stdin: a buffered reader could swallow
control lines behind the launch line, and would hold a lock at interpreter exit.
"""

from __future__ import annotations

import json
import logging
import os
import queue
from collections.abc import Callable

from agents.config import is_rate
from agents.errors import AgentError
from agents.threads import Thread

log = logging.getLogger("edgectl.control")


class ControlChannel:
    def __init__(self, fd: int = 0):
        self._fd = fd
        self._buffer = b""
        self._messages: queue.Queue = queue.Queue()

    def readline(self) -> str | None:
        """The next line (without its newline), or None at end of input."""
        while b"\n" not in self._buffer:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace")

    def watch(self, on_close: Callable[[], None]) -> None:
        """Read control messages on a daemon thread until stdin closes, then `on_close()`."""
        def run() -> None:
            while (line := self.readline()) is not None:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    message = None
                if isinstance(message, dict) and isinstance(message.get("type"), str):
                    self._messages.put(message)
                else:
                    log.warning("ignoring a control line that is not a JSON object with a type")
            on_close()

        Thread(target=run, daemon=True, name="control").start()

    def put(self, message: dict) -> None:
        """Queue a message as if it had arrived (for an agent run in-process, and tests)."""
        self._messages.put(message)

    def expect(self, type_: str, timeout: float) -> dict:
        """The next message of `type_` (others are dropped with a warning)."""
        while True:
            try:
                message = self._messages.get(timeout=timeout)
            except queue.Empty:
                raise AgentError(f"no {type_!r} message from the coordinator in "
                                 f"{timeout:.0f} s") from None
            if message["type"] == type_:
                return message
            log.warning("ignoring control message %r while waiting for %r",
                        message["type"], type_)


def placements_from(message: dict, round_: int, devices: list[str],
                    num_blocks: int, batch_size: int) -> dict[str, tuple[int, int]]:
    """Check a "placements" message for `round_` and return device -> (p, N)."""
    if message.get("round") != round_:
        raise AgentError(f"placements for round {message.get('round')!r}, expected {round_}")
    given = message.get("devices")
    if not isinstance(given, dict) or set(given) != set(devices):
        raise AgentError(f"placements must name exactly the devices {sorted(devices)}")
    out = {}
    for name, value in given.items():
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise AgentError(f"placement of {name}: expected [split_point, microbatches], "
                             f"got {value!r}")
        p, n = value
        most = 1 if p == num_blocks else batch_size
        if not 0 <= p <= num_blocks or not 1 <= n <= most:
            raise AgentError(f"placement of {name}: p={p}, N={n} out of range (p 0..{num_blocks},"
                             f" N 1..{most})")
        out[name] = (p, n)
    return out


def pacing_from(message: dict, devices: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """Check a "placements" message's optional "pacing" and return device -> (up, down)."""
    given = message.get("pacing") or {}
    if not isinstance(given, dict):
        raise AgentError(f"pacing must map devices to [up_bps, down_bps], got {given!r}")
    if unknown := sorted(set(given) - set(devices)):
        raise AgentError(f"pacing names {', '.join(unknown)}, not among the run's devices "
                         f"{', '.join(sorted(devices))}")
    out = {}
    for name, value in given.items():
        if (not isinstance(value, list) or len(value) != 2
                or not all(v is None or is_rate(v) for v in value)):
            raise AgentError(f"pacing of {name}: expected [up_bps, down_bps], each positive "
                             f"or null, got {value!r}")
        out[name] = (value[0], value[1])
    return out
