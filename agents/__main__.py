"""Agent entry point: `python -m agents`, configured by one JSON line on stdin.

The coordinator keeps stdin open for the agent's whole life and may send control messages
on it (agents.control); when it closes (the coordinator exited, crashed, or its SSH channel
dropped) the agent exits at once, so no agent outlives its run. Metric events go to stdout
as JSON lines, logs to stderr.

Exit codes: 0 done, 2 a user-facing error (one line on stderr and an "error" event),
3 the coordinator went away, 1 a bug (traceback on stderr).
"""

from __future__ import annotations

import logging
import os
import sys

from agents.config import AgentSettings, parse_launch_line
from agents.control import ControlChannel
from agents.errors import AgentError, DatasetError
from agents.events import EventSink
from partitions.errors import PartitionError
from profiles.host import available_cores, keep_freed_memory

EXIT_ERROR, EXIT_ORPHANED = 2, 3
EVENT_BATCH_S = 0.05   # spans and progress reach the coordinator within this (agents.events)


def _orphaned() -> None:
    logging.getLogger("edgectl.agent").warning("coordinator went away; exiting")
    os._exit(EXIT_ORPHANED)


def _serve(settings: AgentSettings, run, sink: EventSink, control: ControlChannel) -> None:
    """Import only what the role needs (a link probe: no torch at all, so it starts in a
    fraction of a training agent's time; a task probe: agents.taskprobe); the server sizes
    its own threads (agents.workers)."""
    if settings.extra.get("mode") == "probe":
        from agents.probe import ProbeDevice, ProbeServer
        agent = ProbeServer if settings.role == "server" else ProbeDevice
        agent(run, settings, sink).serve()
        return
    if settings.extra.get("mode") == "tasks":
        from agents.taskprobe import TaskProbeDevice, TaskProbeServer
        agent = TaskProbeServer if settings.role == "server" else TaskProbeDevice
        agent(run, settings, sink).serve()
        return
    from agents.strategies import get_strategy
    if settings.role == "device":
        import torch
        torch.set_num_threads(settings.threads or available_cores())
    if get_strategy(run.strategy).decentralized:
        from agents.bootstrap import BootstrapAgent
        from agents.node import PeerNode
        if settings.role == "server":
            BootstrapAgent(run, settings, sink, control).serve()
        else:
            PeerNode(run, settings, sink).serve()
    elif settings.role == "server":
        from agents.server import ServerAgent
        ServerAgent(run, settings, sink, control).serve()
    else:
        from agents.device import DeviceAgent
        DeviceAgent(run, settings, sink, control).serve()


def main() -> int:
    kept = keep_freed_memory()   # first, before any thread: as profiles are measured
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not kept:
        logging.getLogger("edgectl.agent").info(
            "malloc keeps glibc's defaults here (profiles.host.keep_freed_memory)")
    sink = EventSink("agent", batch_s=EVENT_BATCH_S)
    try:
        control = ControlChannel()
        run, settings = parse_launch_line(control.readline() or "")
        sink.host = settings.name
        control.watch(on_close=_orphaned)
        _serve(settings, run, sink, control)
    except (AgentError, PartitionError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sink.emit("error", message=str(e), kind="data" if isinstance(e, DatasetError) else "run")
        return EXIT_ERROR
    finally:
        sink.flush()   # what was gathered, written before the last event (or a traceback)
    sink.emit("done", reason="completed")
    return 0


def exit_now(code: int) -> None:
    """Flush and leave without interpreter finalization: the connection threads are daemons
    still blocked in I/O, and tearing torch down around them has aborted the process
    ("terminate called without an active exception", exit -6) after a finished run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
