"""Task probes: what a device agent's CPU spends per micro-batch task beyond its stage's compute.

A compute profile (profiles.compute) times each block alone. A device agent does more for
every micro-batch: it frames and sends the activation, reads the gradient back (its
connection's sender and receiver threads), writes span events, and its threads take turns
at the interpreter's lock and share the host's CPU quota. On a 0.1-core testbed device
(VGG-5, B = 32, p = 1, N = 4) the agent spent 22.5 ms of CPU per mini-batch where its stage
alone spent 11.1-11.7: about 1.4 ms per task, 14 ms of wall time each at a tenth of a core,
which a plain profile counted as nothing. `edgectl profile` measures it on each device with
the agent's own code (DeviceAgent.train_batch) over the real link to the server:

    server -> device  PROBE_START {"tasks": true}
    device -> server  ACTIVATION, as training sends them (real frames, real events)
    server -> device  GRADIENT: the activation sent back as its own gradient (the same
                      shape; the server computes nothing)
    device -> server  PROBE_RESULT {"stage_cpu_s", "agent_cpu_s", "batches", "tasks"}

The device trains `batches` mini-batches of random data at (p, N) both ways, alternating
in halves so that a drift of the host's speed falls on both alike: by its stage alone (no
frames, no events: the compute the profile times) and through the agent's path. The
process's CPU time over each (every thread counted) gives the overhead per task, (agent -
stage) / (batches * 2N): a difference of two measurements in one process, so the profile's
own noise (up to 25% at a tenth of a core) is not in it. The server probes one device at a
time, so the devices never compete in a measurement. What the agents' settings carry:
`extra["tasks"]` = {"input_shape", "num_classes", "split_point", "microbatches",
"batches"}; the model and batch size are the run's.
"""

from __future__ import annotations

import time

from agents.config import AgentSettings, RunConfig
from agents.errors import AgentError
from agents.events import EventSink
from agents.probe import OneDeviceAtATime
from agents.session import Joined, join_server
from agents.wire import Frame, MsgType, expect

WARM_UP_BATCHES = 2   # each way, untimed: the first batches pay for lazy initialisation
HALVES = 2            # the timed batches alternate stage / agent in this many turns
FRAME_TIMEOUT_S = 300.0


def probe_spec(agent: AgentSettings) -> dict:
    """The probe's settings from the agent's, checked (a bad one is the coordinator's bug,
    reported as the agent's error)."""
    spec = agent.extra.get("tasks")
    keys = ("input_shape", "num_classes", "split_point", "microbatches", "batches")
    if not isinstance(spec, dict) or any(k not in spec for k in keys):
        raise AgentError(f"task probe: settings must give {', '.join(keys)}")
    return spec


class TaskProbeServer(OneDeviceAtATime):
    """For each device in turn: starts its probe and echoes every activation back as a
    gradient until its result comes; one "task_cost" event each."""

    what = "task probe"
    heartbeats = True   # the device's silence timeout hears them while it computes

    def frame_timeout(self) -> float:
        return FRAME_TIMEOUT_S

    def _probe(self, device: Joined) -> None:
        device.conn.send(Frame(MsgType.PROBE_START, {"tasks": True}))
        while True:
            frame = expect(self._next_from(device), MsgType.ACTIVATION, MsgType.PROBE_RESULT)
            if frame.type is MsgType.PROBE_RESULT:
                break
            meta = {k: frame.meta.get(k) for k in ("round", "batch", "mb")}
            device.conn.send(Frame(MsgType.GRADIENT, {**meta, "sent_at": time.time()},
                                   {"g": frame.tensors["x"]}))
        result = frame.meta
        self.sink.emit("task_cost", device=device.name,
                       **{k: result.get(k) for k in ("stage_cpu_s", "agent_cpu_s", "batches",
                                                     "tasks", "split_point", "microbatches")})


class TaskProbeDevice:
    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        self.run, self.agent, self.sink = run, agent, sink
        self.spec = probe_spec(agent)

    def serve(self) -> None:
        import torch

        from agents.device import DeviceAgent
        from agents.stage import warm_up_optimizer
        from profiles.host import available_cores

        torch.set_num_threads(self.agent.threads or available_cores())
        warm_up_optimizer(self.run.optimizer_at(1))
        conn = join_server(self.agent, self.sink)
        conn.start_heartbeat(self.run.heartbeat_interval)
        device = DeviceAgent(self.run, self.agent, self.sink)
        device.conn = conn
        try:
            while True:
                frame = expect(device._recv(), MsgType.PROBE_START, MsgType.DONE)
                if frame.type is MsgType.DONE:
                    return
                conn.send(Frame(MsgType.PROBE_RESULT, self._measure(device)))
        finally:
            conn.close()

    def _measure(self, device) -> dict:
        """Train the probe's mini-batches both ways (see the module docstring)."""
        import torch

        from agents.device import RoundState, warm_up_model
        from agents.schedule import microbatch_slices
        from agents.strategies import Placement
        from partitions.parts import split
        from partitions.zoo import build_model

        spec, batch_size = self.spec, self.run.batch_size
        torch.manual_seed(self.run.seed)
        model = build_model(self.run.model, tuple(spec["input_shape"]),
                            int(spec["num_classes"]), batch_norm=self.run.batch_norm)
        x = torch.randn(batch_size, *spec["input_shape"])
        y = torch.randint(0, int(spec["num_classes"]), (batch_size,))
        warm_up_model(model, x[:2], y[:2])
        placement = Placement(int(spec["split_point"]), int(spec["microbatches"]))
        part, _ = split(model, placement.split_point)
        stage = device.side.stage({}, part, self.run.optimizer_at(1))
        slices = microbatch_slices(batch_size, placement.microbatches)
        with torch.no_grad():
            grads = [torch.randn_like(part(x[sl])) for sl in slices]
        state = RoundState(1, placement, stage, slices)
        schedule = device.side.schedule({}, placement, model.num_blocks)
        batch_no = iter(range(1 << 30))

        def by_stage() -> None:
            for i, sl in enumerate(slices):
                stage.forward(i, x[sl])
            for i in range(len(slices)):
                stage.backward(i, grads[i])
            stage.step()

        def by_agent() -> None:
            b = next(batch_no)
            device.train_batch(schedule, state, b, x, y)
            self.sink.emit("progress", round=1, batch=b + 1, batches=0,
                           cpu_s=round(time.process_time(), 6))   # as training's loop does

        for _ in range(WARM_UP_BATCHES):
            by_stage()
            by_agent()
        per_half = max(1, int(spec["batches"]) // HALVES)
        spent = {by_stage: 0.0, by_agent: 0.0}
        for _ in range(HALVES):
            for way in (by_stage, by_agent):
                start = time.process_time()
                for _ in range(per_half):
                    way()
                spent[way] += time.process_time() - start
        return {"stage_cpu_s": spent[by_stage], "agent_cpu_s": spent[by_agent],
                "batches": per_half * HALVES, "tasks": 2 * placement.microbatches,
                "split_point": placement.split_point, "microbatches": placement.microbatches}
