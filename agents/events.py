"""Metric events: the one small schema every agent writes as JSON lines on its stdout.

Event types (every event has "type", "host" and "time", when it was written; times are
seconds since the epoch on the *server's* clock, so spans from different hosts line up on
one timeline). The JSON Schema of each is in edgectl/runs/schemas/events.schema.json.

    span      resource, what, round, batch, mb, start, end, bytes (, device)
              resource is one of RESOURCES. A link span belongs to the device whose link
              it is: uplink spans are written by the server (which sees the last byte
              arrive), downlink spans by the device. A server compute span names the
              device it worked for in `device` (what: train, replay or eval; replay:
              ecofed's server training on kept activations).
    listening port                                    (server: ready for devices)
    joined    device, clock_offset, rtt, samples      (server: a device authenticated)
    ready     startup_s, dataset, pid                 (any agent: from its process start to
                                                       ready to train; a device is ready as
                                                       it joins. dataset: name and the
                                                       files read, with bytes and sha256;
                                                       pid: its process on its host)
    progress  round, batch, batches                   (device: a mini-batch finished)
    round     round, loss, test_loss, accuracy, samples, train_s, eval_s, start, end, lr,
              placements (device -> [p, N] that round), devices (those averaged),
              bytes_up and bytes_down (device -> bytes its connection carried that round),
              and what the strategy adds (ecofed: "ecofed"; --dp: epsilon, privacy) (server)
    checkpoint round, bytes, save_s                    (server: wrote the round's checkpoint)
    device_lost device, round, reason, round_discarded (server: gave up on a device)
    device_joined device, round, away_s, clock_offset, rtt (server: a lost device is back)
    disconnected reason                                (device: lost the server; reconnecting)
    done      reason                                   (any agent, as it ends cleanly)
    error     message                                  (any agent, before it exits non-zero)

Summaries, live views and plots are all computed from these events, never measured twice.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import TextIO

from agents.threads import Thread

RESOURCES = ("device.compute", "uplink", "server.compute", "downlink")


def process_started_at() -> float:
    """When this process started (epoch seconds), from /proc where there is one, else when
    this module was imported."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # since boot
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


class EventSink:
    """Writes events for one host, converting its clock to the server's.

    `offset` is this host's clock minus the server's (0 on the server); it is estimated
    when a device connects (see agents.device.estimate_clock_offset).

    With `batch_s` > 0 the frequent events (spans and progress, a dozen per mini-batch) are
    gathered and written together at most `batch_s` after the first of them, by a writer
    thread, instead of one write and flush each on the training path: on the local fleet
    every flush woke the coordinator's reader on the cores the agents train on. Every
    other event is written at once, after those gathered before it, so the order holds;
    `flush()` writes what is gathered (the agent's entry point calls it before exiting).
    """

    BATCHED = frozenset({"span", "progress"})

    def __init__(self, host: str, stream: TextIO | None = None, batch_s: float = 0.0):
        self.host = host
        self.offset = 0.0
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._batch_s = batch_s
        self._pending: list[str] = []
        self._gathered = threading.Event()   # set when the first line of a batch waits
        self._writer: threading.Thread | None = None

    def emit(self, type_: str, **fields: object) -> None:
        fields.setdefault("time", time.time() - self.offset)
        line = json.dumps({"type": type_, "host": fields.pop("host", self.host), **fields},
                          separators=(",", ":"))
        with self._lock:
            self._pending.append(line)
            if self._batch_s > 0 and type_ in self.BATCHED:
                if self._writer is None:
                    self._writer = Thread(target=self._write_batches, daemon=True,
                                          name="events")
                    self._writer.start()
                self._gathered.set()
                return
            self._write_pending()

    def flush(self) -> None:
        """Write every gathered event now."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:   # under self._lock
        if self._pending:
            self._stream.write("\n".join(self._pending) + "\n")
            self._pending.clear()
            self._stream.flush()

    def _write_batches(self) -> None:
        while True:
            self._gathered.wait()
            time.sleep(self._batch_s)   # let the batch gather
            with self._lock:
                self._gathered.clear()
                self._write_pending()

    def span(self, resource: str, what: str, start: float, end: float, *, round_: int,
             batch: int = -1, mb: int = -1, nbytes: int = 0, host: str | None = None,
             device: str | None = None) -> None:
        """Record a busy interval measured on this host's clock; `device`: the device a
        server task worked for."""
        extra = {"device": device} if device else {}
        self.emit("span", host=host or self.host, resource=resource, what=what, round=round_,
                  batch=batch, mb=mb, start=start - self.offset, end=end - self.offset,
                  bytes=nbytes, **extra)

    def ready(self, dataset: dict | None = None) -> None:
        self.emit("ready", startup_s=round(time.time() - process_started_at(), 3),
                  dataset=dataset, pid=os.getpid())

    @contextmanager
    def timed(self, resource: str, what: str, **kw: object):
        start = time.time()
        try:
            yield
        finally:
            self.span(resource, what, start, time.time(), **kw)
