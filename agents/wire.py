"""The wire protocol between agents: frames, authentication and full-duplex connections.

Specification (protocol version 2)
----------------------------------
Every message is one frame::

    offset  size  field
    0       4     magic b"EDGW"
    4       1     protocol version (2)
    5       1     message type (MsgType)
    6       2     flags: bit 0 (FLAG_RAW) = the payload is opaque bytes, not tensors;
                  every other bit zero
    8       4     meta length M, unsigned big-endian, at most MAX_META (1 MiB)
    12      8     payload length P, unsigned big-endian, at most the receiver's max_payload
    20      M     meta: a UTF-8 JSON object
    20+M    P     payload: safetensors bytes (tensors by name), or opaque bytes with
                  FLAG_RAW (a link probe's filler), or nothing when P = 0

Nothing received is ever unpickled or evaluated: meta is parsed with `json.loads`, the
payload by `agents.tensor_codec` (the safetensors format, read as views of the receive
buffer and checked entry by entry) or kept as bytes (FLAG_RAW). A frame with a bad magic,
an unknown version, type or flag, an over-long meta or payload, or meta that is not a
JSON object closes the connection with a logged reason. This module imports torch only
for a frame that carries tensors: a link probe (agents.probe) sends raw payloads and
starts without it, in a fraction of the time.

Authentication comes before any other frame. Both ends hold a per-run secret S:

    server -> client  HELLO  {"protocol": 2, "nonce": Ns}
    client -> server  PROOF  {"nonce": Nc, "mac": HMAC-SHA256(S, "client" | Ns | Nc)}
    server -> client  PROOF  {"mac": HMAC-SHA256(S, "server" | Nc | Ns)}

so each side proves knowledge of S to the other without sending it, and a replayed proof
fails against a fresh nonce. A peer that fails is closed and logged.

Every read has a timeout: IDLE_TIMEOUT while waiting for the next frame to start, and
PROGRESS_TIMEOUT for each chunk once a frame has begun. A training session also sends
HEARTBEAT frames while it has nothing else to send (`Connection.start_heartbeat`), so a
peer that hears nothing at all (`Connection.silent_for`, counted from the last byte
received, so a large frame still arriving on a slow link is not silence) for longer than
its heartbeat timeout is lost: a cut link looks like that, and no read or close says so.
Heartbeats are consumed by the receiver and never reach the inbox. Sends have none of their own (a
large frame on a slow link may take minutes); a peer that stops reading is caught by the
other direction's read timeouts, which close the connection and so wake the send. Each
frame goes out as one gathered `sendmsg` of its header and the tensors' own memory (looped
like `sendall` until all is written) on a TCP_NODELAY socket (a frame split over two
writes waits for a delayed ACK). A receiver wakes when what it waits for is in, up to
WAKE_BYTES at a time (SO_RCVLOWAT), not at every packet (see `WakeMark`).

Decentralized runs (agents.node, agents.bootstrap) add MEMBERSHIP (the server tells a
node that another left), MODEL_REQUEST and MODEL (a node asks a peer, or the server asks
a node, for its current model, which comes back as the tensors of a MODEL frame; nodes
also send each other their trained models as MODEL frames). Nodes connect to each other
with the same authentication as to the server: every connection of a run, device to
device too, proves the run's secret first.

A `Connection` runs a sender thread and a receiver thread with bounded queues, so a peer
uploads and downloads at the same time and a slow link blocks its sender (backpressure)
instead of growing memory. The sender stamps meta["sent_at"] (sender's clock) as the
frame starts onto the socket; the receiver records `received_at` when its last byte is in,
which is how link spans are measured.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import logging
import os
import queue
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agents.errors import AgentError
from agents.threads import Thread

if TYPE_CHECKING:
    import torch

log = logging.getLogger("edgectl.wire")

PROTOCOL_VERSION = 2
MAGIC = b"EDGW"
HEADER = struct.Struct(">4sBBHIQ")
FLAG_RAW = 0x1
MAX_META = 1 << 20
DEFAULT_MAX_PAYLOAD = 1 << 30
IDLE_TIMEOUT = 900.0
PROGRESS_TIMEOUT = 60.0
AUTH_TIMEOUT = 10.0
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE",   # bytes/s; Linux's number
                             47 if sys.platform.startswith("linux") else None)
UNPACED = 0xFFFFFFFF   # SO_MAX_PACING_RATE's "no cap"
WAKE_BYTES = 256 * 1024   # the most a reader waits to have in before it wakes (WakeMark)
MARK_SLICE = 0.1          # ... and, waiting for a chunk of SLICED_FROM bytes or more, it
SLICED_FROM = 16 * 1024   # takes what has come at least this often


class MsgType(enum.IntEnum):
    HELLO = 1
    PROOF = 2
    JOIN = 10
    CLOCK_PING = 11
    CLOCK_PONG = 12
    HEARTBEAT = 13
    ROUND_START = 20
    ACTIVATION = 21
    GRADIENT = 22
    ROUND_END = 23
    MEMBERSHIP = 24
    DONE = 30
    ERROR = 31
    PROBE_START = 40
    PROBE_DATA = 41
    PROBE_END = 42
    PROBE_RESULT = 43
    MODEL_REQUEST = 50
    MODEL = 51


class WireError(AgentError):
    """The peer broke the protocol, failed authentication, timed out or went away."""


@dataclass
class Frame:
    type: MsgType
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    nbytes: int = 0
    received_at: float = 0.0
    raw: bytes | bytearray | memoryview | None = None   # an opaque payload, instead of tensors


def frame_buffers(frame: Frame) -> list:
    """The frame's bytes as buffers to send together: header and meta, then the payload's
    safetensors header and each tensor's memory (agents.tensor_codec), uncopied."""
    meta = json.dumps(frame.meta, separators=(",", ":")).encode()
    if len(meta) > MAX_META:
        raise WireError(f"meta of {frame.type.name} is {len(meta)} bytes, over {MAX_META}")
    if frame.raw is not None:
        if frame.tensors:
            raise WireError(f"{frame.type.name} frame has both tensors and a raw payload")
        payload, flags = [frame.raw], FLAG_RAW
    elif frame.tensors:
        from agents.tensor_codec import tensor_buffers
        payload, flags = tensor_buffers(frame.tensors), 0
    else:
        payload, flags = [], 0
    size = sum(memoryview(b).nbytes for b in payload)
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, int(frame.type), flags, len(meta), size)
    return [head + meta, *payload]


def encode_frame(frame: Frame) -> bytes:
    return b"".join(frame_buffers(frame))


def send_buffers(sock: socket.socket, buffers: list) -> int:
    """Write every buffer in order with gathered sends, like `sendall`; returns the bytes."""
    views = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]
    total = sum(v.nbytes for v in views)
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0], sent = views[0][sent:], 0
    return total


class _TimedOut(WireError):
    """Nothing to read within the wait's timeout."""


def _wait_readable(sock: socket.socket, timeout: float) -> None:
    """Wait for data without touching the socket's own timeout, which the sender shares."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    except (ValueError, OSError):   # closed by another thread (Connection._shutdown)
        raise WireError("connection closed") from None
    if not poller.poll(max(timeout, 0.0) * 1000):
        raise _TimedOut(f"read timed out after {timeout:g} s")


class WakeMark:
    """When a reader of one socket wakes: once `n` bytes are in (SO_RCVLOWAT), not at the
    first byte. A frame on a shaped link arrives a packet at a time, and a reader woken by
    each spent a poll, a read and a turn of Python's loop on every 1.5 KB: a device at 0.1
    core received 800 KB frames at 10 Mbit/s for 25-37 ms of CPU per MB (545-554 reads a
    frame), against 1.7-2.5 with the mark (6-9 reads; bench/wire_cpu.py, README
    "Performance"). The mark is never above the bytes the reader still needs, so a
    read never waits for bytes that are not coming; a closed or failed connection, and a
    receive buffer under pressure, wake it whatever the mark. Only Linux's TCP keeps the
    mark in poll(); elsewhere it wakes early, and reads are merely smaller."""

    def __init__(self, sock: socket.socket):
        self.sock, self.bytes = sock, 1

    def wait_for(self, n: int) -> None:
        n = max(1, min(n, WAKE_BYTES))
        if n != self.bytes:
            self.bytes = n
            with contextlib.suppress(OSError):   # a socket without the option wakes early
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)

    def wait_readable(self, timeout: float) -> None:
        """Wait for the mark's bytes, but take what has come every MARK_SLICE s (waiting
        for a chunk of SLICED_FROM bytes or more: an idle reader is not woken), so the
        mark never holds bytes back for long: bytes that keep arriving are heard
        (`Connection.silent_for`) and are progress for the read timeouts, as without the
        mark, and a peer whose window the unread bytes shut cannot stall the reader (with
        the mark alone, a testbed's plexus run once waited 353 s for a 1.8 MB model frame:
        poll woke for a buffer under pressure, and a blocking read then waited for the
        mark's bytes, which the shut window kept from coming; reads no longer block)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                _wait_readable(self.sock, min(MARK_SLICE, left) if self.bytes >= SLICED_FROM
                               else left)   # a header or meta: no wake-ups while idle
                return
            except _TimedOut:
                if _unread_bytes(self.sock):
                    return   # fewer bytes than the mark: take them now
                if time.monotonic() >= deadline:
                    raise _TimedOut(f"read timed out after {timeout:g} s") from None


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes received by the kernel and not yet read (FIONREAD); 0 where it cannot say."""
    try:
        import fcntl
        import termios
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                              b"\0\0\0\0"))[0]
    except (ImportError, OSError, ValueError):
        return 0


def _recv_exact(sock: socket.socket, n: int, first_timeout: float,
                heard: Callable[[], None] = lambda: None,
                mark: WakeMark | None = None) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got, timeout = 0, first_timeout
    while got < n:
        if mark is None:
            _wait_readable(sock, timeout)
        else:
            mark.wait_for(n - got)
            mark.wait_readable(timeout)
        try:
            # never a blocking read: a blocking recv waits for the mark's bytes (SO_RCVLOWAT)
            # even when poll woke for fewer (a buffer under pressure, a slice's end)
            k = sock.recv_into(view[got:], min(n - got, 1 << 20), socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as e:
            raise WireError(f"connection lost: {e}") from e
        if k == 0:
            raise WireError("peer closed the connection" if got == 0 else "peer closed mid-frame")
        heard()
        got += k
        timeout = PROGRESS_TIMEOUT
    return buf


def read_frame(sock: socket.socket, *, idle_timeout: float = IDLE_TIMEOUT,
               max_payload: int = DEFAULT_MAX_PAYLOAD,
               heard: Callable[[], None] = lambda: None,
               mark: WakeMark | None = None) -> Frame:
    """Read one frame, validating every field before trusting it; `heard()` runs as each
    chunk of it arrives; with a `mark`, the reader wakes for chunks (WakeMark)."""
    magic, version, kind, flags, meta_len, payload_len = HEADER.unpack(
        _recv_exact(sock, HEADER.size, idle_timeout, heard, mark))
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}: not an edgectl peer")
    if version != PROTOCOL_VERSION:
        raise WireError(f"protocol version {version}, this agent speaks {PROTOCOL_VERSION}")
    try:
        msg_type = MsgType(kind)
    except ValueError as e:
        raise WireError(f"unknown message type {kind}") from e
    if flags & ~FLAG_RAW:
        raise WireError(f"unknown flags {flags:#x} on a {msg_type.name} frame")
    if meta_len > MAX_META or payload_len > max_payload:
        raise WireError(f"frame too large: meta {meta_len} B, payload {payload_len} B "
                        f"(limits {MAX_META} B, {max_payload} B)")
    meta_bytes = bytes(_recv_exact(sock, meta_len, PROGRESS_TIMEOUT, heard, mark)) \
        if meta_len else b"{}"
    payload = _recv_exact(sock, payload_len, PROGRESS_TIMEOUT, heard, mark) if payload_len \
        else b""
    received_at = time.time()
    try:
        meta = json.loads(meta_bytes)
        tensors = _decoded(payload) if payload and not flags & FLAG_RAW else {}
    # UnicodeDecodeError is a ValueError and deeply nested JSON raises RecursionError: all
    # are the peer's fault, not a crash.
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise WireError(f"undecodable {msg_type.name} frame: {e}") from e
    if not isinstance(meta, dict):
        raise WireError(f"{msg_type.name} meta is not a JSON object")
    return Frame(msg_type, meta, tensors, HEADER.size + meta_len + payload_len, received_at,
                 payload if flags & FLAG_RAW else None)


def _decoded(payload: bytearray) -> dict[str, torch.Tensor]:
    from agents.tensor_codec import decode_tensors
    return decode_tensors(payload)


def expect(frame: Frame, *types: MsgType) -> Frame:
    if frame.type not in types:
        wanted = " or ".join(t.name for t in types)
        if frame.type is MsgType.ERROR:
            raise WireError(f"peer reported: {frame.meta.get('message', '?')}")
        raise WireError(f"expected {wanted}, got {frame.type.name}")
    return frame


def _mac(secret: bytes, role: bytes, a: str, b: str) -> str:
    return hmac.new(secret, role + bytes.fromhex(a) + bytes.fromhex(b), hashlib.sha256).hexdigest()


def _hex_field(meta: dict, key: str) -> str:
    value = meta.get(key)
    if not isinstance(value, str) or len(value) not in (32, 64):
        raise WireError(f"authentication: missing or malformed {key!r}")
    try:
        bytes.fromhex(value)
    except ValueError as e:
        raise WireError(f"authentication: {key!r} is not hex") from e
    return value


def authenticate_server_side(sock: socket.socket, secret: bytes) -> None:
    """Run the server's half of the handshake; raises WireError if the client fails it."""
    ns = os.urandom(16).hex()
    sock.sendall(encode_frame(Frame(MsgType.HELLO, {"protocol": PROTOCOL_VERSION, "nonce": ns})))
    proof = expect(read_frame(sock, idle_timeout=AUTH_TIMEOUT, max_payload=0), MsgType.PROOF)
    nc = _hex_field(proof.meta, "nonce")
    if not hmac.compare_digest(_hex_field(proof.meta, "mac"), _mac(secret, b"client", ns, nc)):
        raise WireError("authentication failed: the client does not know this run's secret")
    sock.sendall(encode_frame(Frame(MsgType.PROOF, {"mac": _mac(secret, b"server", nc, ns)})))


def authenticate_client_side(sock: socket.socket, secret: bytes) -> None:
    """Run the client's half of the handshake; raises WireError if the server fails it."""
    hello = expect(read_frame(sock, idle_timeout=AUTH_TIMEOUT, max_payload=0), MsgType.HELLO)
    ns = _hex_field(hello.meta, "nonce")
    nc = os.urandom(16).hex()
    mac = _mac(secret, b"client", ns, nc)
    sock.sendall(encode_frame(Frame(MsgType.PROOF, {"nonce": nc, "mac": mac})))
    reply = expect(read_frame(sock, idle_timeout=AUTH_TIMEOUT, max_payload=0), MsgType.PROOF)
    if not hmac.compare_digest(_hex_field(reply.meta, "mac"), _mac(secret, b"server", nc, ns)):
        raise WireError("authentication failed: the server does not know this run's secret")


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Closed:
    """Put in an inbox when a connection ends; `reason` says why."""

    reason: str


class Connection:
    """An authenticated, full-duplex connection with a sender and a receiver thread.

    Received frames go to `inbox` as (connection, frame) pairs, and a (connection, Closed)
    pair when the connection ends. Several connections may share one inbox.
    """

    def __init__(self, sock: socket.socket, peer: str, inbox: queue.Queue | None = None, *,
                 send_depth: int = 16, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.sock, self.peer, self.max_payload = sock, peer, max_payload
        sock.settimeout(None)  # blocking: reads time out through poll(), sends never do
        self.inbox: queue.Queue = inbox if inbox is not None else queue.Queue(maxsize=64)
        self._outbox: queue.Queue = queue.Queue(maxsize=send_depth)
        self._taken = threading.Condition()   # notified when the sender takes a frame
        self._closed = threading.Event()
        self.bytes_sent = self.bytes_received = 0
        self.pace_bps: float | None = None   # what pace() last asked (None: unpaced)
        self.last_heard = time.monotonic()   # when the last byte arrived
        self._threads = [Thread(target=self._send_loop, daemon=True, name=f"tx-{peer}"),
                         Thread(target=self._recv_loop, daemon=True, name=f"rx-{peer}")]
        for t in self._threads:
            t.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, frame: Frame) -> None:
        """Queue a frame; blocks while the queue is full (the link is the bottleneck)."""
        while not self._closed.is_set():
            try:
                self._outbox.put(frame, timeout=0.5)
                return
            except queue.Full:
                continue
        raise WireError(f"connection to {self.peer} is closed")

    def pace(self, bps: float | None) -> float | None:
        """Cap the rate this end sends at, in bit/s (None: no cap), by the kernel's own TCP
        pacing (SO_MAX_PACING_RATE; no qdisc needed). A link shaped to a rate by a token
        bucket with a short queue drops what a sender puts in faster than it drains, and a
        congestion control that probes above the rate (bbr) loses packets and waits out
        retransmissions; paced a little above the link's rate, frames queue without loss.
        Returns the cap the kernel now holds, bit/s (None: none), or None where the
        kernel has no such option (the frames go unpaced)."""
        value = UNPACED if bps is None or bps / 8 >= UNPACED else max(1, int(bps / 8))
        self.pace_bps = bps
        if SO_MAX_PACING_RATE is None:
            log.warning("this system cannot pace a socket; %s is sent to unpaced", self.peer)
            return None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE,
                                 struct.pack("=I", value))
            held = self.sock.getsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, 8)
        except OSError as e:
            log.warning("cannot pace the connection to %s (%s); it sends unpaced", self.peer, e)
            return None
        held_bytes = int.from_bytes(held, sys.byteorder)   # a u64 (a u32 on older kernels)
        return None if held_bytes >= UNPACED else held_bytes * 8.0

    def queued(self) -> int:
        """Frames waiting for the sender thread."""
        return self._outbox.qsize()

    def wait_queued(self, at_most: int, timeout: float) -> bool:
        """Wait until at most `at_most` frames wait for the sender (woken as it takes each,
        not by polling), the connection closes, or `timeout` passes; True if the queue got
        that short."""
        with self._taken:
            self._taken.wait_for(lambda: self._outbox.qsize() <= at_most or self.closed,
                                 max(timeout, 0.0))
        return self._outbox.qsize() <= at_most

    def silent_for(self) -> float:
        """Seconds since the last byte arrived from the peer."""
        return time.monotonic() - self.last_heard

    def _heard(self) -> None:
        self.last_heard = time.monotonic()

    def start_heartbeat(self, interval: float) -> None:
        """Send a HEARTBEAT every `interval` seconds while nothing else waits to be sent,
        until the connection closes, so the peer can tell a quiet peer from a lost one."""
        def beat() -> None:
            while not self._closed.wait(interval):
                if self._outbox.empty():
                    with contextlib.suppress(WireError):
                        self.send(Frame(MsgType.HEARTBEAT))

        Thread(target=beat, daemon=True, name=f"heartbeat-{self.peer}").start()

    def recv(self, timeout: float | None = IDLE_TIMEOUT, *,
             silence: float | None = None) -> Frame:
        """Next frame for a connection with its own inbox; raises WireError when closed,
        after `timeout` without a frame, or after `silence` seconds without a byte."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 1.0 if silence is not None else None
            if deadline is not None:
                wait = min(wait or timeout, max(deadline - time.monotonic(), 0.0))
            try:
                _, item = self.inbox.get(timeout=wait)
                break
            except queue.Empty:
                if silence is not None and self.silent_for() > silence:
                    raise WireError(f"nothing heard from {self.peer} in "
                                    f"{self.silent_for():.0f} s") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise WireError(f"no message from {self.peer} in {timeout:.0f} s") from None
        if isinstance(item, Closed):
            raise WireError(f"{self.peer}: {item.reason}")
        return item

    def close(self, flush_timeout: float = 5.0) -> None:
        """Send what is queued (up to flush_timeout), then close both directions."""
        if not self._closed.is_set():
            try:
                self._outbox.put(None, timeout=flush_timeout)
                self._threads[0].join(flush_timeout)
            except queue.Full:
                pass
        self._shutdown("closed locally")

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued: for a peer given up as lost."""
        self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._taken:
            self._taken.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        log.debug("connection to %s closed: %s", self.peer, reason)

    def _send_loop(self) -> None:
        while not self._closed.is_set():
            frame = self._outbox.get()
            with self._taken:
                self._taken.notify_all()
            if frame is None:
                return
            frame.meta["sent_at"] = time.time()
            try:
                buffers = frame_buffers(frame)
                # counted before the send returns: a reader who saw the peer answer this
                # frame must find it counted
                self.bytes_sent += sum(memoryview(b).nbytes for b in buffers)
                send_buffers(self.sock, buffers)
            except (OSError, WireError) as e:
                self._shutdown(f"send failed: {e}")
                return
            except Exception as e:   # a frame that cannot be encoded: close, never hang
                log.exception("sender to %s failed", self.peer)
                self._shutdown(f"send failed: {type(e).__name__}: {e}")
                return

    def _recv_loop(self) -> None:
        reason, mark = "closed", WakeMark(self.sock)
        while not self._closed.is_set():
            try:
                frame = read_frame(self.sock, max_payload=self.max_payload, heard=self._heard,
                                   mark=mark)
            except WireError as e:
                reason = str(e)
                break
            self.bytes_received += frame.nbytes
            if frame.type is not MsgType.HEARTBEAT:   # it did its work by arriving
                self.inbox.put((self, frame))
        if not self._closed.is_set():
            log.info("connection to %s ended: %s", self.peer, reason)
        self.inbox.put((self, Closed(reason)))
        self._shutdown(reason)


def connect(host: str, port: int, secret: bytes, peer: str = "server", *,
            timeout: float = 30.0, inbox: queue.Queue | None = None) -> Connection:
    """Connect to a server agent and authenticate, retrying refused connects until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=AUTH_TIMEOUT)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise WireError(f"cannot connect to {host}:{port}: {e}") from e
            time.sleep(0.2)
    _tune(sock)
    try:
        authenticate_client_side(sock, secret)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, peer, inbox)


class Listener:
    """Accepts peers, authenticates each on its own thread, hands good ones to a callback.

    A peer that fails authentication or breaks the protocol is logged and closed; the
    listener and every other connection carry on.
    """

    def __init__(self, host: str, port: int, secret: bytes,
                 on_connection: Callable[[Connection], None], inbox: queue.Queue | None = None):
        self.secret, self.on_connection, self.inbox = secret, on_connection, inbox
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.port = self.sock.getsockname()[1]
        self._thread = Thread(target=self._accept_loop, daemon=True, name="accept")
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self.sock.accept()
            except OSError:
                return
            Thread(target=self._admit, args=(sock, addr), daemon=True, name="admit").start()

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        _tune(sock)
        peer = f"{addr[0]}:{addr[1]}"
        try:
            authenticate_server_side(sock, self.secret)
        except (WireError, OSError) as e:
            log.warning("rejected %s: %s", peer, e)
            sock.close()
            return
        self.on_connection(Connection(sock, peer, self.inbox))

    def close(self) -> None:
        # close() alone leaves a thread blocked in accept() accepting one more peer on
        # Linux; shutdown() wakes it with an error first.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
