"""Link probes: each device's throughput both ways and RTT, over the agents' own protocol.

The probe runs as a session of its own, on the port and wire protocol training uses, so
it sees the link as training traffic will (framing, TCP, any tc shaping on the way). The
server probes one device at a time, so devices never compete in a measurement:

    server -> device  PROBE_START {"direction": "up", "seconds": T}
    device -> server  PROBE_DATA x many (16-256 KB each, for T seconds), PROBE_END
    server -> device  PROBE_DATA x many (for T seconds), PROBE_END
    device -> server  PROBE_RESULT {"bps": downlink rate as the device received it}

A rate is measured at the receiver, over the frames that arrived after the first quarter
of the transfer: that skips TCP slow start and the token bucket's initial burst, and T is
at least 2 s, many times a sensible tbf burst. The RTT is the fastest of the join's pings.
The server writes one "link" event per device.
"""

from __future__ import annotations

import queue
import time

from agents.config import AgentSettings, RunConfig
from agents.errors import AgentError
from agents.events import EventSink
from agents.session import Joined, admit_devices, join_server, open_listener
from agents.wire import Closed, Connection, Frame, MsgType, expect

CHUNK = 256 * 1024
MIN_CHUNK = 16 * 1024
QUEUED = 1
MIN_SECONDS = 2.0
SKIP_FRACTION = 0.25


def send_for(conn: Connection, seconds: float) -> None:
    """PROBE_DATA for `seconds`, then PROBE_END. Frames start at MIN_CHUNK bytes and double
    (up to CHUNK) while the link takes them as fast as they come, and at most QUEUED wait
    behind the one being sent: with the connection's whole queue filled with 256 KB frames
    (16 of them, 4 MB), a 1 Mbit/s link went on draining for half a minute after the
    deadline, and within the deadline it carried too few frames to measure. The wait for
    the queue to shorten is woken by the sender taking a frame: polling it every
    millisecond capped loopback at 3.6 Gbit/s."""
    filler = memoryview(bytes(CHUNK))   # raw: a probe needs no tensors, nor torch to start
    chunk, deadline, sent = MIN_CHUNK, time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        # the link keeps up if the sender took the last frame before this one is made
        # (asked right after queueing, the sender had rarely taken it yet: frames stayed
        # at 16 KB, and loopback measured 0.22 Gbit/s)
        if sent and conn.queued() == 0:
            chunk = min(2 * chunk, CHUNK)
        conn.send(Frame(MsgType.PROBE_DATA, {}, raw=filler[:chunk]))
        sent += 1
        conn.wait_queued(QUEUED, deadline - time.monotonic())
    conn.send(Frame(MsgType.PROBE_END))


def rate_of(arrivals: list[tuple[float, int]]) -> float:
    """Bits per second over the arrivals after the first quarter of the transfer."""
    if len(arrivals) < 3:
        raise AgentError("link probe: too few frames arrived to measure a rate")
    t0, t_end = arrivals[0][0], arrivals[-1][0]
    start = t0 + SKIP_FRACTION * (t_end - t0)
    late = [(t, n) for t, n in arrivals if t > start]
    first = max((t for t, _ in arrivals if t <= start), default=t0)
    seconds = late[-1][0] - first
    return sum(n for _, n in late) * 8 / seconds if seconds > 0 else float("inf")


def receive_until_end(next_frame) -> float:
    arrivals = []
    while True:
        frame = next_frame()
        if frame.type is MsgType.PROBE_END:
            return rate_of(arrivals)
        expect(frame, MsgType.PROBE_DATA)
        arrivals.append((frame.received_at, frame.nbytes))


class OneDeviceAtATime:
    """A probe session's server: admits the run's devices, probes each in turn (`_probe`),
    so devices never compete in a measurement, then sends every device DONE. `what` names
    the probe in its errors; `heartbeats`: keep each device's silence timeout fed while it
    computes (the task probe's do)."""

    what = "probe"
    heartbeats = False

    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        self.run, self.agent, self.sink = run, agent, sink
        self.inbox: queue.Queue = queue.Queue(maxsize=256)

    def frame_timeout(self) -> float:
        """How long to wait for a device's next frame."""
        raise NotImplementedError

    def serve(self) -> None:
        listener = open_listener(self.agent, self.inbox, self.sink)
        devices = admit_devices(self.inbox, [d.name for d in self.run.devices], self.sink)
        listener.close()
        if self.heartbeats:
            for device in devices:
                device.conn.start_heartbeat(self.run.heartbeat_interval)
        try:
            for device in devices:
                self._probe(device)
        finally:
            for device in devices:
                device.conn.send(Frame(MsgType.DONE))
                device.conn.close()

    def _probe(self, device: Joined) -> None:
        raise NotImplementedError

    def _next_from(self, device: Joined) -> Frame:
        timeout = self.frame_timeout()
        try:
            conn, item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise AgentError(f"{self.what}: nothing from {device.name} in "
                             f"{timeout:.0f} s") from None
        if conn is not device.conn:
            raise AgentError(f"{self.what}: unexpected message from {conn.peer}")
        if isinstance(item, Closed):
            raise AgentError(f"device {device.name} disconnected during its {self.what}: "
                             f"{item.reason}")
        return item


class ProbeServer(OneDeviceAtATime):
    what = "link probe"

    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        super().__init__(run, agent, sink)
        self.seconds = max(float(agent.extra.get("probe_seconds", MIN_SECONDS)), MIN_SECONDS)

    def frame_timeout(self) -> float:
        return self.seconds * 10 + 30

    def _probe(self, device: Joined) -> None:
        device.conn.send(Frame(MsgType.PROBE_START, {"direction": "up",
                                                     "seconds": self.seconds}))
        uplink = receive_until_end(lambda: self._next_from(device))
        send_for(device.conn, self.seconds)
        result = expect(self._next_from(device), MsgType.PROBE_RESULT)
        self.sink.emit("link", device=device.name, uplink_bps=uplink,
                       downlink_bps=float(result.meta["bps"]), rtt_s=device.rtt,
                       probe_s=self.seconds)


class ProbeDevice:
    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        self.agent, self.sink = agent, sink

    def serve(self) -> None:
        conn = join_server(self.agent, self.sink)
        try:
            while True:
                frame = expect(conn.recv(), MsgType.PROBE_START, MsgType.DONE)
                if frame.type is MsgType.DONE:
                    return
                send_for(conn, float(frame.meta["seconds"]))
                downlink = receive_until_end(conn.recv)
                conn.send(Frame(MsgType.PROBE_RESULT, {"bps": downlink}))
        finally:
            conn.close()
