"""The event sink: spans and progress gathered off the training path, in order, none lost."""

import io
import json
import threading
import time

from agents.events import EventSink


class CountingStream(io.StringIO):
    """A stream that counts its flushes (one per write to the agent's stdout)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_unbatched_sink_writes_every_event_at_once():
    stream = CountingStream()
    sink = EventSink("d1", stream)
    sink.span("device.compute", "forward", 1.0, 2.0, round_=1)
    assert [e["type"] for e in lines(stream)] == ["span"]
    assert stream.flushes == 1


def test_batched_spans_are_written_together_after_the_interval():
    stream = CountingStream()
    sink = EventSink("d1", stream, batch_s=1.0)
    for mb in range(8):
        sink.span("device.compute", "forward", 1.0, 2.0, round_=1, mb=mb)
    sink.emit("progress", round=1, batch=1, batches=5, cpu_s=0.1)
    assert stream.getvalue() == ""   # gathered, not yet written
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    events = lines(stream)
    assert [e.get("mb") for e in events] == [*range(8), None]
    assert stream.flushes == 1   # nine events, one write


def test_other_events_write_what_was_gathered_first_so_order_holds():
    stream = CountingStream()
    sink = EventSink("d1", stream, batch_s=60.0)   # the writer thread never gets to it
    sink.span("device.compute", "forward", 1.0, 2.0, round_=1)
    sink.emit("progress", round=1, batch=1, batches=1, cpu_s=0.1)
    sink.emit("error", message="boom", kind="run")
    assert [e["type"] for e in lines(stream)] == ["span", "progress", "error"]


def test_flush_writes_gathered_events_and_nothing_twice():
    stream = CountingStream()
    sink = EventSink("d1", stream, batch_s=60.0)
    sink.span("uplink", "activation", 1.0, 2.0, round_=1)
    sink.flush()
    sink.flush()
    assert [e["type"] for e in lines(stream)] == ["span"]


def test_events_from_many_threads_are_all_written_whole():
    stream = CountingStream()
    sink = EventSink("s", stream, batch_s=0.01)

    def emit(worker: int) -> None:
        for i in range(200):
            sink.span("server.compute", "train", 1.0, 2.0, round_=1, batch=i, mb=worker)

    threads = [threading.Thread(target=emit, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.flush()
    events = lines(stream)   # every line parses: none interleaved
    assert len(events) == 800
    for w in range(4):   # each thread's events in the order it emitted them
        assert [e["batch"] for e in events if e["mb"] == w] == list(range(200))
