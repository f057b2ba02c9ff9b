"""The wire protocol over real sockets: frames, rejections, timeouts, auth, Listener, Connection."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import pickle
import queue
import select
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from agents import wire
from agents.wire import (
    HEADER,
    MAGIC,
    MAX_META,
    PROTOCOL_VERSION,
    Closed,
    Connection,
    Frame,
    Listener,
    MsgType,
    WakeMark,
    WireError,
    authenticate_client_side,
    authenticate_server_side,
    connect,
    encode_frame,
    read_frame,
)

SECRET = b"per-run secret for the tests"
WAIT = 5.0  # upper bound on every blocking wait: a bug fails the test instead of hanging it


# ---------------------------------------------------------------- helpers


class Worker(threading.Thread):
    """Runs fn(*args) on a daemon thread and keeps its result or exception."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # handed to the test
            self.error = e

    def finish(self, timeout: float = WAIT) -> Worker:
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} did not return within {timeout} s"
        return self


def read_bounded(sock: socket.socket, **kwargs) -> Frame:
    """read_frame on a thread, so a reader that ignores its timeouts fails instead of hanging."""
    reader = Worker(read_frame, sock, **kwargs).finish()
    if reader.error is not None:
        raise reader.error
    return reader.result


def raw_frame(kind: int = MsgType.JOIN, meta: bytes = b"{}", payload: bytes = b"", *,
              magic: bytes = MAGIC, version: int = PROTOCOL_VERSION,
              meta_len: int | None = None, payload_len: int | None = None,
              flags: int = 0) -> bytes:
    """Bytes of a frame built by hand, so every header field can be made wrong."""
    meta_len = len(meta) if meta_len is None else meta_len
    payload_len = len(payload) if payload_len is None else payload_len
    return HEADER.pack(magic, version, int(kind), flags, meta_len, payload_len) + meta + payload


def tcp_pair(bufsize: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on 127.0.0.1 (optionally with small kernel buffers)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if bufsize:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        client.settimeout(WAIT)
        client.connect(srv.getsockname()[:2])
        peer, _ = srv.accept()
    if bufsize:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    return client, peer


def spec_mac(secret: bytes, role: bytes, a: str, b: str) -> str:
    """HMAC-SHA256(S, role | a | b) over the raw nonce bytes, as the docstring specifies."""
    return hmac.new(secret, role + bytes.fromhex(a) + bytes.fromhex(b), hashlib.sha256).hexdigest()


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def peer_hung_up(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True when the peer closed `sock` (EOF or reset) within timeout; data is drained."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


class MakesDirectory:
    """Unpickling this creates a directory: proof that a payload was (not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def server():
    """A real Listener on 127.0.0.1:0; server-side connections are recorded as they arrive."""
    accepted: queue.Queue[Connection] = queue.Queue()
    made: list[Connection] = []

    def on_connection(conn: Connection) -> None:
        made.append(conn)
        accepted.put(conn)

    inbox: queue.Queue = queue.Queue()
    listener = Listener("127.0.0.1", 0, SECRET, on_connection, inbox)
    clients: list[Connection] = []

    def dial(secret: bytes = SECRET) -> Connection:
        conn = connect("127.0.0.1", listener.port, secret, timeout=WAIT)
        clients.append(conn)
        return conn

    yield SimpleNamespace(listener=listener, accepted=accepted, made=made, inbox=inbox,
                          dial=dial)
    for conn in clients + made:
        conn.close(flush_timeout=0.5)
    listener.close()


# ---------------------------------------------------------------- frames


def test_header_layout_matches_the_specification():
    meta = {"round": 3}
    data = encode_frame(Frame(MsgType.ROUND_START, meta))
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    assert data[:4] == b"EDGW"
    assert data[4] == 2 and data[5] == MsgType.ROUND_START and data[6:8] == b"\0\0"
    assert struct.unpack(">I", data[8:12])[0] == len(meta_bytes)
    assert struct.unpack(">Q", data[12:20])[0] == 0
    assert data[20:] == meta_bytes


def test_round_trip_keeps_meta_tensors_and_counts_bytes(pair):
    a, b = pair
    tensors = {
        "act": torch.randn(2, 3, 4),
        "labels": torch.tensor([3, -1, 2**40], dtype=torch.int64),
        "mask": torch.tensor([[0, 255]], dtype=torch.uint8),
        "half": torch.randn(5).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
    }
    meta = {"round": 7, "mb": 2, "device": "pi-1", "nested": {"k": [1, 2.5, None]}, "ü": "é"}
    data = encode_frame(Frame(MsgType.ACTIVATION, meta, tensors))
    before = time.time()
    a.sendall(data)
    frame = read_bounded(b, idle_timeout=WAIT)
    after = time.time()

    assert frame.type is MsgType.ACTIVATION
    assert frame.meta == meta
    assert set(frame.tensors) == set(tensors)
    for name, tensor in tensors.items():
        got = frame.tensors[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name
    assert frame.nbytes == len(data)
    assert before <= frame.received_at <= after


def test_frame_without_tensors_has_no_payload(pair):
    a, b = pair
    data = encode_frame(Frame(MsgType.DONE, {"ok": True}))
    assert struct.unpack(">Q", data[12:20])[0] == 0
    a.sendall(data + encode_frame(Frame(MsgType.CLOCK_PING)))
    done = read_bounded(b, idle_timeout=WAIT)
    assert (done.type, done.meta, done.tensors) == (MsgType.DONE, {"ok": True}, {})
    assert done.nbytes == len(data) and done.received_at > 0
    ping = read_bounded(b, idle_timeout=WAIT)  # the next frame starts exactly where one ended
    assert (ping.type, ping.meta, ping.tensors) == (MsgType.CLOCK_PING, {}, {})


def test_a_raw_payload_crosses_as_bytes_under_its_flag(pair):
    a, b = pair
    data = encode_frame(Frame(MsgType.PROBE_DATA, {}, raw=b"\x00\x01" * 1000))
    assert data[6:8] == b"\0\1"   # FLAG_RAW
    a.sendall(data)
    frame = read_bounded(b, idle_timeout=WAIT)
    assert (frame.type, frame.tensors, bytes(frame.raw)) == \
        (MsgType.PROBE_DATA, {}, b"\x00\x01" * 1000)
    assert frame.nbytes == len(data)
    with pytest.raises(WireError, match="both tensors and a raw payload"):
        encode_frame(Frame(MsgType.MODEL, {}, {"w": torch.zeros(1)}, raw=b"x"))


def test_encode_refuses_meta_over_the_limit():
    with pytest.raises(WireError, match="over"):
        encode_frame(Frame(MsgType.JOIN, {"blob": "x" * MAX_META}))


# ---------------------------------------------------------------- rejections


def unknown_dtype_safetensors() -> bytes:
    header = json.dumps({"x": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\0"


REJECTED = {
    "bad magic": (raw_frame(magic=b"HTTP"), "bad magic"),
    "unsupported version": (raw_frame(version=1), "protocol version 1"),
    "unknown flag": (raw_frame(flags=0x2), "unknown flags 0x2"),
    "unknown type": (raw_frame(kind=99), "unknown message type 99"),
    "meta over MAX_META": (raw_frame(meta_len=MAX_META + 1), "too large"),
    "huge payload": (raw_frame(payload_len=1 << 40), "too large"),
    "meta a JSON list": (raw_frame(meta=b"[1, 2]"), "not a JSON object"),
    "meta a JSON string": (raw_frame(meta=b'"hi"'), "not a JSON object"),
    "meta not JSON": (raw_frame(meta=b"{round: 1"), "undecodable JOIN"),
    "meta not UTF-8": (raw_frame(meta=b'{"a": "\xff\xfe"}'), "undecodable JOIN"),
    "meta nested too deep": (raw_frame(meta=b"[" * 10_000), "undecodable JOIN"),
    "payload not safetensors": (raw_frame(payload=b"garbage"), "undecodable JOIN"),
    "payload with unknown dtype": (raw_frame(payload=unknown_dtype_safetensors()),
                                   "undecodable JOIN"),
}


@pytest.mark.parametrize("data, message", REJECTED.values(), ids=REJECTED.keys())
def test_malformed_frames_raise_wire_error(pair, monkeypatch, data, message):
    # The sender stays open: a reader that waited for bytes that never come would hit this
    # progress timeout and fail on the message instead of passing or hanging.
    monkeypatch.setattr(wire, "PROGRESS_TIMEOUT", 2.0)
    a, b = pair
    a.sendall(data)
    with pytest.raises(WireError, match=message):
        read_bounded(b, idle_timeout=WAIT)


def test_oversized_payload_is_refused_from_the_header_alone(pair, monkeypatch):
    monkeypatch.setattr(wire, "PROGRESS_TIMEOUT", 3.0)
    a, b = pair
    a.sendall(raw_frame(MsgType.ACTIVATION, payload_len=101))  # header only, then silence
    start = time.monotonic()
    with pytest.raises(WireError, match=r"too large.*payload 101 B.*100 B"):
        read_bounded(b, idle_timeout=WAIT, max_payload=100)
    assert time.monotonic() - start < 1.0, "waited for a payload it should refuse unread"


def test_payload_within_the_receivers_limit_is_accepted(pair):
    a, b = pair
    data = encode_frame(Frame(MsgType.GRADIENT, {}, {"g": torch.zeros(10)}))
    a.sendall(data)
    payload = len(data) - HEADER.size - 2
    assert read_bounded(b, idle_timeout=WAIT, max_payload=payload).tensors["g"].shape == (10,)
    a.sendall(data)
    with pytest.raises(WireError, match="too large"):
        read_bounded(b, idle_timeout=WAIT, max_payload=payload - 1)


@pytest.mark.parametrize("where", ["payload", "meta"])
@pytest.mark.parametrize("dump", ["pickle", "torch.save"])
def test_pickled_bytes_are_never_unpickled(pair, tmp_path, where, dump):
    target = tmp_path / "pwned"
    if dump == "pickle":
        blob = pickle.dumps(MakesDirectory(target))
    else:
        buffer = io.BytesIO()
        torch.save({"x": MakesDirectory(target)}, buffer)
        blob = buffer.getvalue()
    a, b = pair
    a.sendall(raw_frame(MsgType.ACTIVATION, **{where: blob}))
    with pytest.raises(WireError, match="undecodable ACTIVATION"):
        read_bounded(b, idle_timeout=WAIT)
    assert not target.exists()
    # The gadget is live: unpickling the same kind of bytes does run it.
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(MakesDirectory(armed)))
    assert armed.is_dir()


# ---------------------------------------------------------------- timeouts


def test_idle_timeout_on_a_silent_peer(pair):
    _, b = pair
    start = time.monotonic()
    with pytest.raises(WireError, match="timed out"):
        read_bounded(b, idle_timeout=0.2)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("sent", [
    raw_frame(meta=b'{"round": 1}')[:10],  # half a header
    raw_frame(meta=b'{"round": 1}')[:25],  # header and part of the meta
    raw_frame(payload=b"x" * 64)[:-10],  # all but the end of the payload
], ids=["half header", "half meta", "half payload"])
def test_peer_that_stalls_mid_frame_times_out(pair, monkeypatch, sent):
    monkeypatch.setattr(wire, "PROGRESS_TIMEOUT", 0.2)
    a, b = pair
    a.sendall(sent)
    start = time.monotonic()
    with pytest.raises(WireError, match="timed out"):
        read_bounded(b, idle_timeout=WAIT)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("cut, message", [(0, "peer closed the connection"),
                                          (7, "peer closed mid-frame"),
                                          (23, "peer closed mid-frame")])
def test_peer_that_hangs_up_is_reported(pair, cut, message):
    a, b = pair
    a.sendall(raw_frame(meta=b'{"round": 1}')[:cut])
    a.close()
    with pytest.raises(WireError, match=message):
        read_bounded(b, idle_timeout=WAIT)


def counting_waits(monkeypatch) -> list[int]:
    """Counts the reader's waits for data: one per read of the socket."""
    waits, wait = [], wire._wait_readable

    def counted(sock, timeout):
        waits.append(1)
        return wait(sock, timeout)

    monkeypatch.setattr(wire, "_wait_readable", counted)
    return waits


def dribble(sock: socket.socket, data: bytes, piece: int = 1448, close: bool = False) -> None:
    """Send `data` a packet's worth at a time with pauses, as a slow shaped link delivers it."""
    for i in range(0, len(data), piece):
        sock.sendall(data[i:i + piece])
        if i // piece % 32 == 31:
            time.sleep(0.001)
    if close:
        sock.close()


def test_a_marked_reader_wakes_for_chunks_not_for_each_packet(monkeypatch):
    """A 1 MB frame arriving a packet at a time: read with a WakeMark, the reader wakes a
    few times per WAKE_BYTES, not ~700 times (once per packet, on a slow link)."""
    waits = counting_waits(monkeypatch)
    a, b = tcp_pair()
    payload = os.urandom(1 << 20)
    try:
        Worker(dribble, a, raw_frame(MsgType.PROBE_DATA, payload=payload, flags=wire.FLAG_RAW))
        frame = read_bounded(b, mark=WakeMark(b))
    finally:
        a.close()
        b.close()
    assert bytes(frame.raw) == payload
    # header, meta, four chunks of 256 KB; a few more if the kernel wakes early (buffer
    # pressure), never one per packet
    assert len(waits) <= 6 + 8, len(waits)


@pytest.mark.parametrize("payload, cut", [(b"", None), (b"x" * 10, None),
                                          (os.urandom(600_000), 400_000)],
                         ids=["no payload", "small payload", "hung up mid-payload"])
def test_a_marked_reader_never_waits_for_bytes_that_are_not_coming(payload, cut):
    """The mark is never above what the frame still needs: a frame smaller than WAKE_BYTES
    arrives at once, and a peer that hangs up mid-frame is reported at once."""
    a, b = tcp_pair()
    data = raw_frame(MsgType.PROBE_DATA, meta=b'{"round": 1}', payload=payload,
                     flags=wire.FLAG_RAW)
    try:
        Worker(dribble, a, data if cut is None else data[:cut], close=cut is not None)
        start = time.monotonic()
        if cut is None:
            frame = read_bounded(b, mark=WakeMark(b))
            assert frame.meta == {"round": 1} and bytes(frame.raw or b"") == payload
        else:
            with pytest.raises(WireError, match="peer closed mid-frame"):
                read_bounded(b, mark=WakeMark(b))
        assert time.monotonic() - start < 2.0
    finally:
        a.close()
        b.close()


def test_bytes_waiting_for_the_mark_are_not_silence():
    """A frame arriving slower than the reader's chunk fills: the reader sleeps, but the peer
    is heard while bytes keep coming, and silent once they stop."""
    a, b = tcp_pair()
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # each 1 KB goes out at once
    conn = Connection(b, "slow peer")
    try:
        data = raw_frame(MsgType.PROBE_DATA, payload=bytes(600_000), flags=wire.FLAG_RAW)
        a.sendall(data[:40])   # the header and meta, then 1 KB every 5 ms: 0.2 MB/s
        quiet = []
        for i in range(200):   # 200 KB in about a second, under the reader's 256 KB
            a.sendall(data[40 + 1000 * i:40 + 1000 * (i + 1)])
            time.sleep(0.005)
            if i % 20 == 19:
                quiet.append(conn.silent_for())
        assert max(quiet) < 0.3, quiet
        quiet = []
        for _ in range(8):     # the peer stops mid-frame: a watchdog looking every 0.1 s
            time.sleep(0.1)
            quiet.append(conn.silent_for())
        assert quiet[-1] > 0.5, quiet
        assert conn.inbox.empty()   # the frame is not complete
    finally:
        a.close()
        conn.close(flush_timeout=0.5)


def test_a_chunk_slower_than_the_progress_timeout_is_progress_and_a_stall_is_not(monkeypatch):
    """Bytes keep arriving, too slowly to fill the reader's mark within PROGRESS_TIMEOUT:
    the read goes on. Once they stop, it times out as before."""
    monkeypatch.setattr(wire, "PROGRESS_TIMEOUT", 0.2)
    a, b = tcp_pair()
    data = raw_frame(MsgType.PROBE_DATA, payload=os.urandom(300_000), flags=wire.FLAG_RAW)

    def slowly(upto: int) -> None:   # 1 KB every 5 ms: 256 KB would take 1.3 s
        a.sendall(data[:40])
        for i in range(40, upto, 1000):
            a.sendall(data[i:min(i + 1000, upto)])
            time.sleep(0.005)

    try:
        Worker(slowly, len(data))
        frame = Worker(read_frame, b, mark=WakeMark(b)).finish(timeout=10)
        assert frame.error is None and bytes(frame.result.raw) == data[-300_000:]
        Worker(slowly, 100_000)      # then stops mid-payload
        stalled = Worker(read_frame, b, mark=WakeMark(b)).finish(timeout=10)
        assert isinstance(stalled.error, WireError) and "timed out" in str(stalled.error)
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- authentication


def handshake(sock_server, sock_client, server_secret, client_secret):
    """Both halves on their own threads; the server closes on failure, like the Listener."""

    def server_half():
        try:
            authenticate_server_side(sock_server, server_secret)
        except BaseException:
            sock_server.close()
            raise

    server = Worker(server_half)
    client = Worker(authenticate_client_side, sock_client, client_secret)
    return server.finish().error, client.finish().error


def test_handshake_with_the_same_secret_succeeds(pair):
    a, b = pair
    assert handshake(a, b, SECRET, SECRET) == (None, None)
    # and the sockets are left in step: the next frame is read normally
    a.sendall(encode_frame(Frame(MsgType.JOIN, {"device": "pi"})))
    assert read_bounded(b, idle_timeout=WAIT).meta == {"device": "pi"}


def test_handshake_with_different_secrets_fails_both_sides(pair):
    a, b = pair
    server_error, client_error = handshake(a, b, SECRET, b"another run's secret")
    assert isinstance(server_error, WireError)
    assert "does not know this run's secret" in str(server_error)
    assert isinstance(client_error, WireError)


def test_handshake_follows_the_documented_macs(pair):
    """A client written from the docstring alone authenticates against the real server."""
    a, b = pair
    server = Worker(authenticate_server_side, a, SECRET)
    hello = read_bounded(b, idle_timeout=WAIT)
    assert hello.type is MsgType.HELLO and hello.meta["protocol"] == PROTOCOL_VERSION
    ns, nc = hello.meta["nonce"], os.urandom(16).hex()
    b.sendall(encode_frame(Frame(MsgType.PROOF,
                                 {"nonce": nc, "mac": spec_mac(SECRET, b"client", ns, nc)})))
    reply = read_bounded(b, idle_timeout=WAIT)
    assert server.finish().error is None
    assert reply.type is MsgType.PROOF
    assert reply.meta["mac"] == spec_mac(SECRET, b"server", nc, ns)
    assert SECRET.hex() not in json.dumps(hello.meta) + json.dumps(reply.meta)


def test_client_rejects_a_server_that_does_not_know_the_secret(pair):
    a, b = pair
    client = Worker(authenticate_client_side, b, SECRET)
    ns = os.urandom(16).hex()
    a.sendall(encode_frame(Frame(MsgType.HELLO, {"protocol": 1, "nonce": ns})))
    proof = read_bounded(a, idle_timeout=WAIT)
    forged = spec_mac(b"a guess", b"server", proof.meta["nonce"], ns)
    a.sendall(encode_frame(Frame(MsgType.PROOF, {"mac": forged})))
    error = client.finish().error
    assert isinstance(error, WireError)
    assert "server does not know this run's secret" in str(error)


def test_client_rejects_its_own_proof_reflected_back(pair):
    a, b = pair
    client = Worker(authenticate_client_side, b, SECRET)
    a.sendall(encode_frame(Frame(MsgType.HELLO, {"protocol": 1, "nonce": os.urandom(16).hex()})))
    proof = read_bounded(a, idle_timeout=WAIT)
    a.sendall(encode_frame(Frame(MsgType.PROOF, {"mac": proof.meta["mac"]})))
    assert isinstance(client.finish().error, WireError)


class Recorder:
    """A socket that keeps a copy of everything sent through it."""

    def __init__(self, sock):
        self._sock, self.sent = sock, []

    def sendall(self, data):
        self.sent.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_replayed_proof_fails_against_a_fresh_nonce():
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    try:
        recorder = Recorder(b1)
        assert handshake(a1, recorder, SECRET, SECRET) == (None, None)
        (recorded_proof,) = recorder.sent

        server = Worker(authenticate_server_side, a2, SECRET)
        assert read_bounded(b2, idle_timeout=WAIT).type is MsgType.HELLO
        b2.sendall(recorded_proof)
        error = server.finish().error
        assert isinstance(error, WireError)
        assert "does not know this run's secret" in str(error)
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


MALFORMED_PROOFS = {
    "nonce not hex": {"nonce": "zz" * 16, "mac": "00" * 32},
    "nonce too short": {"nonce": "ab" * 5, "mac": "00" * 32},
    "nonce not a string": {"nonce": 12345, "mac": "00" * 32},
    "nonce missing": {"mac": "00" * 32},
    "mac not hex": {"nonce": "ab" * 16, "mac": "g" * 64},
    "mac wrong length": {"nonce": "ab" * 16, "mac": "00" * 31},
    "mac not ascii": {"nonce": "ab" * 16, "mac": "é" * 64},
    "mac missing": {"nonce": "ab" * 16},
}


@pytest.mark.parametrize("meta", MALFORMED_PROOFS.values(), ids=MALFORMED_PROOFS.keys())
def test_server_rejects_malformed_proofs_cleanly(pair, meta):
    a, b = pair
    server = Worker(authenticate_server_side, a, SECRET)
    assert read_bounded(b, idle_timeout=WAIT).type is MsgType.HELLO
    b.sendall(encode_frame(Frame(MsgType.PROOF, meta)))
    error = server.finish().error
    assert isinstance(error, WireError), repr(error)
    assert "authentication" in str(error)


@pytest.mark.parametrize("nonce", ["zz" * 16, "ab", None, "ab" * 17],
                         ids=["not hex", "too short", "missing", "odd length"])
def test_client_rejects_a_malformed_hello_cleanly(pair, nonce):
    a, b = pair
    client = Worker(authenticate_client_side, b, SECRET)
    meta = {"protocol": 1} if nonce is None else {"protocol": 1, "nonce": nonce}
    a.sendall(encode_frame(Frame(MsgType.HELLO, meta)))
    error = client.finish().error
    assert isinstance(error, WireError), repr(error)
    assert "authentication" in str(error)


@pytest.mark.parametrize("data, message", [
    (encode_frame(Frame(MsgType.JOIN, {"device": "pi"})), "expected PROOF, got JOIN"),
    (encode_frame(Frame(MsgType.PROOF, {}, {"t": torch.zeros(1)})), "too large"),
    (encode_frame(Frame(MsgType.ERROR, {"message": "boom"})), "peer reported: boom"),
], ids=["other message first", "proof with a payload", "error instead of proof"])
def test_server_accepts_nothing_before_the_proof(pair, data, message):
    a, b = pair
    server = Worker(authenticate_server_side, a, SECRET)
    assert read_bounded(b, idle_timeout=WAIT).type is MsgType.HELLO
    b.sendall(data)
    with pytest.raises(WireError, match=message):
        raise server.finish().error or AssertionError("server accepted the frame")


# ---------------------------------------------------------------- Listener and connect


def test_connect_and_exchange_frames_both_ways(server):
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)

    client.send(Frame(MsgType.JOIN, {"device": "pi-1"}, {"x": torch.arange(4)}))
    conn, frame = server.inbox.get(timeout=WAIT)
    assert conn is server_conn
    assert (frame.type, frame.meta["device"]) == (MsgType.JOIN, "pi-1")
    assert torch.equal(frame.tensors["x"], torch.arange(4))

    server_conn.send(Frame(MsgType.ROUND_START, {"round": 1}))
    reply = client.recv(timeout=WAIT)
    assert (reply.type, reply.meta["round"]) == (MsgType.ROUND_START, 1)


def test_full_duplex_both_sides_send_at_once_and_keep_order(server):
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)
    n = 50
    start = threading.Barrier(2, timeout=WAIT)

    def send_all(conn, kind):
        start.wait()
        for i in range(n):
            conn.send(Frame(kind, {"i": i}, {"v": torch.full((256,), float(i))}))

    senders = [Worker(send_all, client, MsgType.ACTIVATION),
               Worker(send_all, server_conn, MsgType.GRADIENT)]
    up = [server.inbox.get(timeout=WAIT) for _ in range(n)]
    down = [client.recv(timeout=WAIT) for _ in range(n)]
    for s in senders:
        assert s.finish().error is None

    assert all(conn is server_conn for conn, _ in up)
    assert [f.meta["i"] for _, f in up] == list(range(n))
    assert all(f.type is MsgType.ACTIVATION and f.tensors["v"][0] == f.meta["i"] for _, f in up)
    assert [f.meta["i"] for f in down] == list(range(n))
    assert all(f.type is MsgType.GRADIENT and f.tensors["v"][-1] == f.meta["i"] for f in down)


def test_wrong_secret_is_rejected_and_the_listener_carries_on(server):
    with pytest.raises(WireError):
        server.dial(b"not the secret")
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)
    client.send(Frame(MsgType.JOIN, {"device": "good"}))
    conn, frame = server.inbox.get(timeout=WAIT)
    assert conn is server_conn and frame.meta["device"] == "good"
    assert len(server.made) == 1  # the rejected peer never became a connection


def test_garbage_and_silent_peers_do_not_block_a_good_client(server, monkeypatch):
    monkeypatch.setattr(wire, "AUTH_TIMEOUT", 1.0)
    address = ("127.0.0.1", server.listener.port)
    with socket.create_connection(address, timeout=WAIT) as silent, \
            socket.create_connection(address, timeout=WAIT) as rude:
        assert read_bounded(rude, idle_timeout=WAIT).type is MsgType.HELLO
        rude.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n"[:HEADER.size])  # exactly one header
        assert peer_hung_up(rude), "a peer sending garbage was not dropped"

        assert read_bounded(silent, idle_timeout=WAIT).type is MsgType.HELLO
        client = server.dial()  # while the silent peer still holds its own admit thread
        server_conn = server.accepted.get(timeout=WAIT)
        client.send(Frame(MsgType.JOIN, {"device": "good"}))
        assert server.inbox.get(timeout=WAIT)[1].meta["device"] == "good"
        assert not select.select([silent], [], [], 0)[0], "silent peer dropped too early"

        assert peer_hung_up(silent), "a silent peer was not dropped after AUTH_TIMEOUT"
    assert server.made == [server_conn]
    assert not client.closed and not server_conn.closed


def test_listener_close_stops_accepting(server):
    server.dial()
    server.listener.close()
    with pytest.raises(WireError, match="cannot connect"):
        connect("127.0.0.1", server.listener.port, SECRET, timeout=0.3)
    assert len(server.made) == 1


def test_connect_gives_up_after_its_timeout_when_nobody_listens():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(WireError, match=f"cannot connect to 127.0.0.1:{port}"):
        connect("127.0.0.1", port, SECRET, timeout=0.3)
    assert time.monotonic() - start < WAIT


def test_tcp_nodelay_on_both_ends(server):
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)
    for conn in (client, server_conn):
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# ---------------------------------------------------------------- Connection


def test_sender_stamps_sent_at_and_byte_counters_add_up(server):
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)
    before = time.time()
    for i in range(5):
        client.send(Frame(MsgType.ACTIVATION, {"mb": i}, {"a": torch.randn(3, i + 1)}))
    frames = [server.inbox.get(timeout=WAIT)[1] for _ in range(5)]
    after = time.time()

    for frame in frames:
        assert before <= frame.meta["sent_at"] <= frame.received_at <= after
        # nbytes is the whole frame as it was on the wire, sent_at included
        assert frame.nbytes == len(encode_frame(Frame(frame.type, frame.meta, frame.tensors)))
    total = sum(f.nbytes for f in frames)
    assert wait_until(lambda: client.bytes_sent == total), (client.bytes_sent, total)
    assert server_conn.bytes_received == total
    assert client.bytes_received == 0 and server_conn.bytes_sent == 0


def test_peer_close_puts_closed_in_the_inbox(server):
    client = server.dial()
    server_conn = server.accepted.get(timeout=WAIT)
    client.send(Frame(MsgType.DONE))
    client.close()
    conn, frame = server.inbox.get(timeout=WAIT)
    assert conn is server_conn and frame.type is MsgType.DONE  # queued frames are flushed
    conn, item = server.inbox.get(timeout=WAIT)
    assert conn is server_conn and isinstance(item, Closed)
    assert "closed" in item.reason
    assert wait_until(lambda: server_conn.closed)
    with pytest.raises(WireError, match="closed"):
        server_conn.send(Frame(MsgType.ROUND_START))


def test_recv_raises_once_the_peer_is_gone():
    mine, theirs = tcp_pair()
    conn = Connection(mine, "peer-x")
    try:
        theirs.close()
        with pytest.raises(WireError, match="peer-x: peer closed"):
            conn.recv(timeout=WAIT)
        assert wait_until(lambda: conn.closed)
    finally:
        conn.close(flush_timeout=0.5)


def test_recv_times_out_without_a_message():
    mine, theirs = tcp_pair()
    conn = Connection(mine, "quiet")
    try:
        with pytest.raises(WireError, match="no message from quiet"):
            conn.recv(timeout=0.1)
        assert not conn.closed
    finally:
        conn.close(flush_timeout=0.5)
        theirs.close()


def test_send_on_a_closed_connection_raises():
    mine, theirs = tcp_pair()
    conn = Connection(mine, "gone")
    conn.close(flush_timeout=0.5)
    theirs.close()
    assert conn.closed
    with pytest.raises(WireError, match="connection to gone is closed"):
        conn.send(Frame(MsgType.DONE))


def test_a_broken_frame_from_the_peer_closes_the_connection_with_a_reason():
    mine, theirs = tcp_pair()
    conn = Connection(mine, "bad-peer")
    try:
        theirs.sendall(encode_frame(Frame(MsgType.JOIN, {"n": 1})))
        theirs.sendall(raw_frame(MsgType.JOIN, meta=b"[" * 10_000))
        assert conn.recv(timeout=WAIT).meta["n"] == 1
        with pytest.raises(WireError, match="bad-peer: undecodable JOIN"):
            conn.recv(timeout=WAIT)
        assert wait_until(lambda: conn.closed)
    finally:
        conn.close(flush_timeout=0.5)
        theirs.close()


def test_send_blocks_when_the_peer_does_not_read_then_resumes():
    mine, theirs = tcp_pair(bufsize=32 * 1024)
    conn = Connection(mine, "slow", send_depth=1)
    big = {"t": torch.ones(512 * 1024)}  # 2 MiB per frame, far above the socket buffers
    try:
        conn.send(Frame(MsgType.ACTIVATION, {"i": 0}, big))  # the sender thread takes it
        conn.send(Frame(MsgType.ACTIVATION, {"i": 1}, big))  # waits in the queue
        third = Worker(conn.send, Frame(MsgType.ACTIVATION, {"i": 2}, big))
        third.join(0.3)
        assert third.is_alive(), "send() returned although the peer reads nothing"
        assert conn._outbox.qsize() <= 1

        received = [read_bounded(theirs, idle_timeout=WAIT) for _ in range(3)]
        assert third.finish().error is None
        assert [f.meta["i"] for f in received] == [0, 1, 2]
        assert all(torch.equal(f.tensors["t"], big["t"]) for f in received)
    finally:
        conn.close(flush_timeout=0.5)
        theirs.close()


def test_wait_queued_returns_as_the_sender_takes_frames_and_on_close():
    """The probe's pacing: wait_queued waits while more frames than asked wait for the
    sender, wakes when the sender takes one (no polling), and gives up at its timeout or
    when the connection closes."""
    mine, theirs = tcp_pair(bufsize=32 * 1024)
    conn = Connection(mine, "slow", send_depth=4)
    big = {"t": torch.ones(512 * 1024)}  # 2 MiB per frame, far above the socket buffers
    try:
        for i in range(3):   # the sender is stuck on the first; two wait behind it
            conn.send(Frame(MsgType.ACTIVATION, {"i": i}, big))
        assert wait_until(lambda: conn.queued() == 2)
        started = time.monotonic()
        assert conn.wait_queued(1, 0.3) is False
        assert time.monotonic() - started >= 0.29
        assert conn.wait_queued(2, 0.0) is True

        # a waiter that is only woken by its timeout (WAIT) would miss finish's 1 s
        waiter = Worker(conn.wait_queued, 0, WAIT)
        waiter.join(0.2)
        assert waiter.is_alive()
        received = [read_bounded(theirs, idle_timeout=WAIT) for _ in range(2)]
        assert waiter.finish(timeout=1.0).result is True
        assert [f.meta["i"] for f in received] == [0, 1]

        conn.send(Frame(MsgType.ACTIVATION, {"i": 3}, big))   # stuck behind frame 2
        conn.send(Frame(MsgType.ACTIVATION, {"i": 4}, big))
        assert wait_until(lambda: conn.queued() == 2)
        closer = Worker(conn.wait_queued, 0, WAIT)
        closer.join(0.2)
        assert closer.is_alive()
        conn.abort("test")
        assert closer.finish(timeout=1.0).result is False     # closed, frames still queued
    finally:
        conn.close(flush_timeout=0.5)
        theirs.close()


def test_a_frame_the_sender_cannot_encode_closes_the_connection_instead_of_hanging():
    """Meta over MAX_META fails in the sender thread. It used to end that thread and leave
    the connection open: later sends queued up and then blocked for ever."""
    mine, theirs = tcp_pair()
    conn = Connection(mine, "peer", send_depth=1)
    try:
        conn.send(Frame(MsgType.JOIN, {"blob": "x" * MAX_META}))
        assert wait_until(lambda: conn.closed)
        with pytest.raises(WireError, match="closed"):
            conn.send(Frame(MsgType.HEARTBEAT))
        assert peer_hung_up(theirs)
    finally:
        conn.close(flush_timeout=0.5)
        theirs.close()
