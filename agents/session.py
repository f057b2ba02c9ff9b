"""How a run's agents meet: the server admits the expected devices, each device joins.

Shared by every kind of agent session (training, link probes). The server listens and
announces its port as a "listening" event; a device connects, authenticates (agents.wire),
estimates its clock offset against the server with a few pings, and sends JOIN with its
name. The server admits exactly the devices the run names, once each, answering pings
meanwhile; a stranger or a duplicate is refused and logged, and the rest carry on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from dataclasses import dataclass, field, replace

from agents.config import AgentSettings
from agents.control import ControlChannel
from agents.errors import AgentError
from agents.events import EventSink
from agents.wire import Closed, Connection, Frame, Listener, MsgType, connect, expect

log = logging.getLogger("edgectl.session")
JOIN_TIMEOUT = 120.0
CLOCK_SAMPLES = 8
PORT_WAIT_S = 300.0   # the coordinator gives up on a server that does not listen in 120 s


@dataclass(eq=False)
class Joined:
    """A device the server admitted."""

    name: str
    conn: Connection
    clock_offset: float     # the device's clock minus the server's
    rtt: float
    samples: int
    peer: dict = field(default_factory=dict)   # a decentralized node's address and model


def open_listener(agent: AgentSettings, inbox: queue.Queue, sink: EventSink) -> Listener:
    listener = Listener(agent.bind_host, agent.server_port, bytes.fromhex(agent.secret),
                        lambda conn: None, inbox)
    sink.emit("listening", port=listener.port)
    return listener


def answer_ping(conn: Connection) -> None:
    conn.send(Frame(MsgType.CLOCK_PONG, {"server_time": time.time()}))


def admit_devices(inbox: queue.Queue, expected: list[str], sink: EventSink) -> list[Joined]:
    """Wait until every expected device has joined; returns them in join order."""
    joined: dict[str, Joined] = {}
    deadline = time.monotonic() + JOIN_TIMEOUT
    while len(joined) < len(expected):
        try:
            conn, item = inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            missing = sorted(set(expected) - set(joined))
            raise AgentError(f"devices never joined within {JOIN_TIMEOUT:.0f} s: "
                             f"{', '.join(missing)}") from None
        if conn is None:
            raise item  # the agent's own background work failed (it put its error here)
        if isinstance(item, Closed):
            continue  # a peer that went away before joining is no loss
        if item.type is MsgType.CLOCK_PING:
            answer_ping(conn)
        elif item.type is MsgType.JOIN and item.meta.get("device") in set(expected) - set(joined):
            device = joined_from(conn, item)
            joined[device.name] = device
            sink.emit("joined", device=device.name, clock_offset=device.clock_offset,
                      rtt=device.rtt, samples=device.samples)
        else:
            refuse(conn, item)
    return list(joined.values())


def refuse(conn: Connection, frame: Frame) -> None:
    """Turn away a peer that is not an expected device of the run (or one already in)."""
    log.warning("%s sent %s %r before joining; refusing it", conn.peer, frame.type.name,
                frame.meta.get("device"))
    with contextlib.suppress(AgentError):
        conn.send(Frame(MsgType.ERROR, {"message": "not an expected device of this run"}))
    conn.close()


def joined_from(conn: Connection, frame: Frame) -> Joined:
    meta = frame.meta
    peer = meta.get("peer")
    return Joined(str(meta["device"]), conn, float(meta.get("clock_offset", 0.0)),
                  float(meta.get("rtt", 0.0)), int(meta.get("samples", 0)),
                  peer if isinstance(peer, dict) else {})


def estimate_clock_offset(conn: Connection, samples: int = CLOCK_SAMPLES) -> tuple[float, float]:
    """(this clock minus the server's, round-trip time), from the fastest of a few pings."""
    best = (0.0, float("inf"))
    for _ in range(samples):
        t0 = time.time()
        conn.send(Frame(MsgType.CLOCK_PING, {"t0": t0}))
        pong = expect(conn.recv(timeout=30), MsgType.CLOCK_PONG)
        t1 = time.time()
        if t1 - t0 < best[1]:
            best = ((t0 + t1) / 2 - float(pong.meta["server_time"]), t1 - t0)
    return best


@dataclass(eq=False)
class Connected:
    """A device's authenticated connection to the server, clocks aligned, not yet joined."""

    conn: Connection
    clock_offset: float
    rtt: float


def with_server_port(agent: AgentSettings, control: ControlChannel | None) -> AgentSettings:
    """`agent` with the server's port: as launched, or, for a device the coordinator started
    alongside its server (port 0, the server had none yet), from the coordinator's
    {"type": "server", "port": P} control message, sent once the server listens."""
    if agent.server_port:
        return agent
    if control is None:
        raise AgentError("a device needs the server's port, in its settings or from the "
                         "coordinator's control channel")
    port = control.expect("server", PORT_WAIT_S).get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AgentError(f"the coordinator's server message has no valid port: {port!r}")
    return replace(agent, server_port=port)


def connect_to_server(agent: AgentSettings) -> Connected:
    """Connect, authenticate and align clocks: what a device can do while it loads."""
    conn = connect(agent.server_host, agent.server_port, bytes.fromhex(agent.secret),
                   timeout=60)
    return Connected(conn, *estimate_clock_offset(conn))


def send_join(agent: AgentSettings, sink: EventSink, connected: Connected,
              samples: int = 0, rejoin: bool = False, peer: dict | None = None) -> Connection:
    """Join as `agent.name`; from now on sink times are on the server's clock. The clocks
    are compared again first: the estimate made while this agent (and the server) were
    still loading can be off by milliseconds, so the one with the shorter round trip wins."""
    offset, rtt = min(estimate_clock_offset(connected.conn),
                      (connected.clock_offset, connected.rtt), key=lambda e: e[1])
    sink.offset = offset
    connected.conn.send(Frame(MsgType.JOIN, {
        "device": agent.name, "clock_offset": offset, "rtt": rtt, "samples": samples,
        "rejoin": rejoin, **({"peer": peer} if peer else {})}))
    return connected.conn


def join_server(agent: AgentSettings, sink: EventSink, samples: int = 0) -> Connection:
    """Connect, authenticate, align clocks (sink.offset) and join as `agent.name`."""
    return send_join(agent, sink, connect_to_server(agent), samples)
