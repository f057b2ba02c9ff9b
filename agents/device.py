"""The device agent: trains its part of the model on its shard, round after round.

It connects to the server, estimates its clock offset, joins, and then for every
ROUND_START runs the strategy's schedule (agents.schedule) on each mini-batch through a
`DeviceStage`, moving activations and gradients over its `Connection`. Batches are
prepared on a separate thread so data loading stays off the critical path.

Connections fail: the server closes a device it gave up on, a link goes down. When the
connection closes, or nothing has arrived for the run's heartbeat timeout (the server sends
heartbeats while it computes), the device drops the round it was in, reconnects with
backoff for up to REJOIN_WINDOW_S and joins again; the server takes it back at its next
round start. Only a server that stays unreachable ends the agent with an error.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from agents.config import AgentSettings, RunConfig, data_dir_for, is_rate
from agents.control import ControlChannel
from agents.datasets import (
    Dataset,
    batch_order,
    dataset_record,
    load_dataset,
    partition_indices,
)
from agents.errors import AgentError
from agents.events import EventSink
from agents.privacy import (
    PrivateDeviceStage,
    require_opacus,
    trainable_parts,
    warm_up_private,
)
from agents.schedule import Action, Op, microbatch_slices
from agents.session import Connected, connect_to_server, send_join, with_server_port
from agents.stage import DeviceStage, warm_up_optimizer
from agents.strategies import Placement, Strategy, get_strategy
from agents.threads import Thread
from agents.wire import Connection, Frame, MsgType, WireError, expect
from partitions.parts import load_part_state, split
from partitions.zoo import BlockModel, build_model

REJOIN_WINDOW_S = 300.0   # how long a device that lost the server keeps trying to come back


def prefetch(ds: Dataset, batches: Iterator[torch.Tensor], depth: int = 2):
    """Yield (x, y) prepared on a background thread, `depth` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        for indices in batches:
            q.put(ds.batch(indices))
        q.put(None)

    Thread(target=produce, daemon=True, name="prefetch").start()
    while (item := q.get()) is not None:
        yield item


def in_background(fn: Callable, *args: object) -> Callable[[], object]:
    """Start fn(*args) on a daemon thread; the returned function waits for its result
    (or raises its error)."""
    box: list = []

    def run() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - raised again by the caller
            box.append((False, e))

    thread = Thread(target=run, daemon=True, name=f"bg-{fn.__name__}")
    thread.start()

    def result() -> object:
        thread.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    return result


def warm_up_model(model: BlockModel, x: torch.Tensor, y: torch.Tensor) -> None:
    """A first forward and backward pass are slow (lazy initialisation in torch's kernels
    and autograd engine); pay for them untimed, on a couple of samples, in eval mode so no
    batch-norm statistics move, and drop the gradients. The backward is given its output
    gradient, as a split device's is: the first such backward imports torch's
    symbolic-shape checks (0.3 s of CPU here). The optimizer's warm-up runs beside the
    loading (see DeviceAgent.serve)."""
    model.eval()
    try:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward(torch.ones_like(loss))
    finally:
        model.zero_grad(set_to_none=True)
        model.train()


@dataclass
class RoundState:
    round: int
    placement: Placement
    stage: DeviceStage   # or what the strategy's DeviceSide gives (same methods)
    slices: list[slice]
    loss_sum: float = 0.0
    steps: int = 0


def rejoin_server(agent: AgentSettings, sink: EventSink, reason: str,
                  join: Callable[[Connected], None]) -> None:
    """After the server's connection is lost: a `disconnected` event, then reconnect and
    `join` with backoff (1, 2, 4 ... 10 s) for up to REJOIN_WINDOW_S."""
    sink.emit("disconnected", reason=reason)
    deadline, delay = time.monotonic() + REJOIN_WINDOW_S, 1.0
    while True:
        try:
            join(connect_to_server(agent))
            return
        except (WireError, OSError) as e:
            if time.monotonic() + delay > deadline:
                raise AgentError(f"lost the server ({reason}) and could not reconnect "
                                 f"within {REJOIN_WINDOW_S:.0f} s: {e}") from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class DeviceAgent:
    """Connects to the server on a thread while it loads its shard and model, then joins."""

    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink,
                 control: ControlChannel | None = None):
        self.run, self.agent, self.sink, self.control = run, agent, sink, control
        self.strategy: Strategy = get_strategy(run.strategy)
        self.side = self.strategy.device_side(run)   # the strategy's hooks (strategies.base)
        self.conn: Connection | None = None

    def _load(self) -> None:
        run = self.run
        self.ds = load_dataset(run.dataset, data_dir_for(run, self.agent), test=False)
        shards = partition_indices(self.ds.train_y, len(run.devices), run.partition, run.seed)
        self.shard = shards[run.device_index(self.agent.name)]
        torch.manual_seed(run.seed)
        self.model: BlockModel = build_model(run.model, self.ds.input_shape,
                                             self.ds.num_classes, batch_norm=run.batch_norm)
        self.batches_per_round = len(self.shard) // run.batch_size
        if run.max_batches:
            self.batches_per_round = min(self.batches_per_round, run.max_batches)

    def serve(self) -> None:
        connecting = in_background(self._connect)
        if self.run.dp is not None:
            # a host without opacus fails before joining, in one line; imported before the
            # optimizer's warm-up thread starts, because two threads importing torch's
            # modules at once can deadlock on the import locks (importlib._DeadlockError)
            require_opacus()
        warming = in_background(warm_up_optimizer, self.run.optimizer_at(1),
                                self.run.dp is not None)
        self._load()
        warming()   # before joining: the server starts round 1 once every device has joined
        self._warm_up()   # after the optimizer's: both may import torch's symbolic-shape
        # modules (torch._dynamo does, for DP and adam), and two threads importing the
        # same modules at once can deadlock, as above
        if self.run.dp is not None:   # after the optimizer's warm-up, for the same reason
            self._warm_up_private()
        self._join(connecting())
        self.sink.ready(dataset_record(self.ds))
        try:
            while True:
                try:
                    frame = expect(self._recv(), MsgType.ROUND_START, MsgType.DONE)
                    if frame.type is MsgType.DONE:
                        return
                    self._train_round(frame)
                except WireError as e:
                    if not self.conn.closed:
                        raise   # the server broke the protocol: no reconnecting from that
                    self._rejoin(str(e))
        finally:
            self.conn.close()

    def _connect(self) -> Connected:
        """On a thread while the agent loads: waits for the server's port if it was started
        without one (`with_server_port`), and keeps it for rejoins."""
        self.agent = with_server_port(self.agent, self.control)
        return connect_to_server(self.agent)

    def _join(self, connected, rejoin: bool = False) -> None:
        self.conn = send_join(self.agent, self.sink, connected, samples=len(self.shard),
                              rejoin=rejoin)
        self.conn.start_heartbeat(self.run.heartbeat_interval)

    def _recv(self) -> Frame:
        """The next frame from the server; a silent server is given up on (the connection
        is closed, so the caller reconnects)."""
        try:
            return self.conn.recv(timeout=None, silence=self.run.heartbeat_timeout)
        except WireError as e:
            self.conn.abort(str(e))
            raise

    def _rejoin(self, reason: str) -> None:
        """The connection is gone, and the round with it: join again (`rejoin_server`)."""
        rejoin_server(self.agent, self.sink, reason, lambda c: self._join(c, rejoin=True))

    def _pace(self, r: int, bps: float | None) -> None:
        """Pace what goes up to the server from round r on, as ROUND_START says (the
        server's side is agents.server.ServerAgent._pace)."""
        if bps is not None and not is_rate(bps):
            raise WireError(f"ROUND_START: pace_up_bps must be positive or null, got {bps!r}")
        if bps == self.conn.pace_bps:   # a new connection is unpaced
            return
        held = self.conn.pace(bps)
        self.sink.emit("pacing", device=self.agent.name, round=r, direction="up",
                       asked_bps=bps, held_bps=held)

    def _warm_up(self) -> None:
        x, y = self.ds.batch(self.shard[: min(2, len(self.shard))])
        warm_up_model(self.model, x, y)

    def _warm_up_private(self) -> None:
        """Opacus's first step, untimed (agents.privacy)."""
        x, y = self.ds.batch(self.shard[: min(2, len(self.shard))])
        warm_up_private(self.model, self.run, x, y)

    def _train_round(self, start: Frame) -> None:
        r = int(start.meta["round"])
        self.sink.span("downlink", "weights", start.meta["sent_at"] + self.sink.offset,
                       start.received_at, round_=r, nbytes=start.nbytes)
        self._pace(r, start.meta.get("pace_up_bps"))
        placement = Placement(int(start.meta["split_point"]), int(start.meta["microbatches"]))
        if placement.split_point == 0:
            self.run.check_raw_upload(self.agent.name)   # the device's own guard
        device_part, _ = split(self.model, placement.split_point)
        load_part_state(device_part, start.tensors)
        self.model.train()
        stage = self._stage(device_part, placement, r) if self.run.dp is not None else \
            self.side.stage(start.meta, device_part, self.run.optimizer_at(r))
        state = RoundState(r, placement, stage,
                           microbatch_slices(self.run.batch_size, placement.microbatches))
        schedule = self.side.schedule(start.meta, placement, self.model.num_blocks)
        order = batch_order(self.shard, self.run.batch_size, self.run.seed, r)
        batches = (b for _, b in zip(range(self.batches_per_round if schedule else 0), order,
                                     strict=False))   # no actions: no data to load
        cpu_at_start = time.process_time()
        try:
            for b, (x, y) in enumerate(prefetch(self.ds, batches)):
                self.train_batch(schedule, state, b, x, y)
                # cpu_s: this process's CPU time in the round so far, every thread counted:
                # what calibration (edgectl.planning.calibration) sets against the profile
                self.sink.emit("progress", round=r, batch=b + 1, batches=self.batches_per_round,
                               cpu_s=round(time.process_time() - cpu_at_start, 6))
        finally:
            state.stage.close()
        tensors, extra = self.side.round_end(device_part)
        self.conn.send(Frame(
            MsgType.ROUND_END,
            {"round": r, "samples": self.batches_per_round * self.run.batch_size,
             "batches": self.batches_per_round, "loss_sum": state.loss_sum,
             "loss_steps": state.steps, **extra}, tensors))

    def _stage(self, part: torch.nn.Module, placement: Placement, r: int) -> DeviceStage:
        """The round's stage: plain, or under DP-SGD (agents.privacy) when the run asks."""
        if self.run.dp is None:
            return DeviceStage(part, self.run.optimizer_at(r))
        return PrivateDeviceStage(part, self.run.optimizer_at(r), self.run,
                                  parts=trainable_parts(self.model, placement.split_point),
                                  microbatches=placement.microbatches, round_=r,
                                  device_index=self.run.device_index(self.agent.name))

    def train_batch(self, schedule: list[Action], state: RoundState, b: int,
                    x: torch.Tensor, y: torch.Tensor) -> None:
        """Mini-batch b of the round: the schedule's actions, each as `_execute` does it
        (the link probe's task measurement runs this too: agents.taskprobe)."""
        for action in schedule:
            self._execute(action, state, b, x, y)

    def _execute(self, action: Action, st: RoundState, b: int, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        where = {"round_": st.round, "batch": b, "mb": action.mb}
        if action.op is Op.FORWARD:
            sl = st.slices[action.mb]
            with self.sink.timed("device.compute", "forward", **where):
                act = st.stage.forward(action.mb, x[sl])
                tensors, extra = self.side.encode(act)
            self.conn.send(Frame(MsgType.ACTIVATION, {
                "round": st.round, "batch": b, "mb": action.mb,
                "microbatches": st.placement.microbatches,
                "weight": (sl.stop - sl.start) / self.run.batch_size, **extra},
                {**tensors, "y": y[sl]}))
        elif action.op is Op.BACKWARD:
            grad = self._receive_gradient(st.round, b, action.mb)
            with self.sink.timed("device.compute", "backward", **where):
                st.stage.backward(action.mb, grad)
        elif action.op is Op.LOCAL:
            with self.sink.timed("device.compute", "train", **where):
                st.loss_sum += st.stage.local_step(x, y)
                st.steps += 1
        else:
            with self.sink.timed("device.compute", "step", **where):
                st.stage.step()

    def _receive_gradient(self, r: int, b: int, mb: int) -> torch.Tensor:
        frame = expect(self._recv(), MsgType.GRADIENT)
        got = (frame.meta.get("round"), frame.meta.get("batch"), frame.meta.get("mb"))
        if got != (r, b, mb):
            raise AgentError(f"gradient out of order: expected round/batch/mb {(r, b, mb)}, "
                             f"got {got}")
        self.sink.span("downlink", "gradient", frame.meta["sent_at"] + self.sink.offset,
                       frame.received_at, round_=r, batch=b, mb=mb, nbytes=frame.nbytes)
        return frame.tensors["g"]
