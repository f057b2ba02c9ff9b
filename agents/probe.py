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


class ProbeServer:
    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        self.run, self.agent, self.sink = run, agent, sink
        self.seconds = max(float(agent.extra.get("probe_seconds", MIN_SECONDS)), MIN_SECONDS)
        self.inbox: queue.Queue = queue.Queue(maxsize=256)

    def serve(self) -> None:
        listener = open_listener(self.agent, self.inbox, self.sink)
        devices = admit_devices(self.inbox, [d.name for d in self.run.devices], self.sink)
        listener.close()
        try:
            for device in devices:
                self._probe(device)
        finally:
            for device in devices:
                device.conn.send(Frame(MsgType.DONE))
                device.conn.close()

    def _next_from(self, device: Joined) -> Frame:
        conn, item = self.inbox.get(timeout=self.seconds * 10 + 30)
        if conn is not device.conn:
            raise AgentError(f"link probe: unexpected message from {conn.peer}")
        if isinstance(item, Closed):
            raise AgentError(f"device {device.name} disconnected during its link probe: "
                             f"{item.reason}")
        return item

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
