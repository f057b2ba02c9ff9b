"""The server agent: admits devices, trains the server-side parts, aggregates and evaluates.

The server owns the global model. Each round it places every device (strategy.place),
sends it the weights of its blocks [0, p), and trains a per-device copy of blocks [p, L)
on that device's activations in the order they arrive, on the compute worker the device is
bound to (agents.workers: one per core the server may use, so different devices' work runs
in parallel and each device's in order). When every device has ended the round, each
device's full model (its uploaded blocks plus its server copy) is averaged by sample count
(FedAvg) into the global model, which is evaluated on the test set, spread over the
workers.

In a paced run (RunConfig.paced: an adaptive run, or one whose bandwidth schedule changes
at round starts) every round after the first starts when the coordinator sends its
placements on the control channel (agents.control), once it has seen the round before end
and done what it does between rounds (re-plan, re-shape the links).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from agents.config import AgentSettings, DeviceSpec, RunConfig, data_dir_for
from agents.control import ControlChannel, placements_from
from agents.datasets import check_dataset, dataset_record, load_dataset
from agents.errors import AgentError
from agents.events import EventSink
from agents.model_file import ModelMeta, save_model
from agents.session import admit_devices, answer_ping, open_listener
from agents.stage import ServerStage, evaluate, warm_up_optimizer, weighted_average
from agents.strategies import Placement, get_strategy
from agents.wire import IDLE_TIMEOUT, Closed, Connection, Frame, MsgType
from agents.workers import Workers, threads_per_worker, worker_count, worker_of
from partitions.parts import split
from partitions.zoo import BlockModel, build_model
from profiles.host import available_cores

log = logging.getLogger("edgectl.server")

PLACEMENTS_TIMEOUT = 300.0   # a paced run's wait for the coordinator's next placements (it may
                             # re-shape slow hosts over SSH first: 10-30 s at 0.1 core)


@dataclass(eq=False)
class DeviceSession:
    """The server's view of one joined device."""

    name: str
    conn: Connection
    clock_offset: float
    model: BlockModel                       # this device's copy; blocks [p, L) train here
    worker: int = 0                         # the compute worker its server part runs on
    placement: Placement | None = None
    stage: ServerStage | None = None
    arrived: dict[int, int] = field(default_factory=dict)   # batch -> micro-batches seen
    loss_sum: float = 0.0
    loss_weight: float = 0.0
    upload: dict | None = None
    samples: int = 0
    bytes_at_start: tuple[int, int] = (0, 0)   # the connection's (sent, received) counters


class ServerAgent:
    """Listens at once; loads its test set and model while the devices start and join."""

    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink,
                 control: ControlChannel | None = None):
        self.run, self.agent, self.sink = run, agent, sink
        self.control = control or ControlChannel()
        self.specs = {d.name: d for d in run.devices}   # this round's (p, N) per device
        self.strategy = get_strategy(run.strategy)
        self.side = self.strategy.server_side(run)   # the strategy's hooks (strategies.base)
        self.inbox: queue.Queue = queue.Queue(maxsize=256)
        self.sessions: dict[Connection, DeviceSession] = {}
        self.load_error: BaseException | None = None
        cores = available_cores()
        self.workers = Workers(worker_count(cores, len(run.devices)), self._on_worker_error)
        torch.set_num_threads(threads_per_worker(cores, self.workers.count, agent.threads))

    def _load(self) -> None:
        """The test set (normalized once) and the initial global model. An error is kept
        for serve to raise and put in the inbox to wake the admission loop at once."""
        try:
            ds = load_dataset(self.run.dataset, data_dir_for(self.run, self.agent))
            n_test = min(self.run.eval_samples or len(ds.test_y), len(ds.test_y))
            self.test_x, self.test_y = ds.batch(torch.arange(n_test), False)
            self.model_meta = ModelMeta.for_run(self.run, ds, rounds_completed=0)
            torch.manual_seed(self.run.seed)
            self.model = build_model(self.run.model, ds.input_shape, ds.num_classes,
                                     batch_norm=self.run.batch_norm)
            self.side.prepare(self.model)
            self._warming.join()
            self.sink.ready(dataset_record(ds))
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            self.load_error = e
            self.inbox.put((None, e))

    def serve(self) -> None:
        check_dataset(self.run.dataset, data_dir_for(self.run, self.agent))
        listener = open_listener(self.agent, self.inbox, self.sink)
        self._warming = threading.Thread(target=warm_up_optimizer, daemon=True, name="warm-up",
                                         args=(self.run.optimizer_at(1),))
        self._warming.start()   # torch.optim's first use imports its compiler stack (~1 s)
        loader = threading.Thread(target=self._load, daemon=True, name="load")
        loader.start()
        try:
            joined = admit_devices(self.inbox, [d.name for d in self.run.devices], self.sink)
            loader.join()
            if self.load_error is not None:
                raise self.load_error
            self.side.check_fleet(self.model, {d.name: d.samples for d in joined})
            for device in joined:
                worker = worker_of(self.run.device_index(device.name), self.workers.count)
                self.sessions[device.conn] = DeviceSession(
                    device.name, device.conn, device.clock_offset, copy.deepcopy(self.model),
                    worker)
            listener.close()
            for r in range(1, self.run.rounds + 1):   # rounds count from 1, as users count
                if r > 1 and self.run.paced:
                    self._take_placements(r)
                self._run_round(r)
            if self.agent.model_out:   # with what it takes to use it (agents.model_file)
                save_model(os.path.expanduser(self.agent.model_out), self.model.state_dict(),
                           replace(self.model_meta, rounds_completed=self.run.rounds))
        finally:
            self.workers.close()
            listener.close()
            for session in self.sessions.values():
                if not session.conn.closed:
                    session.conn.send(Frame(MsgType.DONE))
                session.conn.close()

    def _take_placements(self, r: int) -> None:
        """A paced run: wait for the coordinator's placements for round r (see the module
        docstring)."""
        message = self.control.expect("placements", timeout=PLACEMENTS_TIMEOUT)
        placed = placements_from(message, r, list(self.specs), self.model.num_blocks,
                                 self.run.batch_size)
        for name, (p, n) in placed.items():
            if p == 0:
                self.run.check_raw_upload(name)
            self.specs[name] = DeviceSpec(name, p, n)

    def _start_round(self, r: int, session: DeviceSession) -> None:
        spec = self.specs[session.name]
        session.placement = self.side.placement(
            r, self.strategy.place(spec, self.model.num_blocks, self.run.batch_size),
            self.model.num_blocks)
        session.model.load_state_dict(self.model.state_dict())
        device_part, server_part = split(session.model, session.placement.split_point)
        session.stage = (ServerStage(server_part, self.run.optimizer_at(r),
                                     input_grad=self.side.wants_gradient(r, session.placement))
                         if server_part.num_blocks else None)
        session.arrived.clear()
        session.loss_sum = session.loss_weight = 0.0
        session.upload = None
        session.bytes_at_start = (session.conn.bytes_sent, session.conn.bytes_received)
        meta, tensors = self.side.round_start(r, session.name, session.placement, device_part)
        session.conn.send(Frame(MsgType.ROUND_START, {
            "round": r, "split_point": session.placement.split_point,
            "microbatches": session.placement.microbatches, **meta}, tensors))

    def _run_round(self, r: int) -> None:
        t0 = time.time()
        for session in self.sessions.values():
            self._start_round(r, session)
        pending = set(self.sessions.values())
        while pending:
            try:
                conn, item = self.inbox.get(timeout=IDLE_TIMEOUT)
            except queue.Empty:
                raise AgentError(f"no message from any device in {IDLE_TIMEOUT:.0f} s") from None
            if conn is None:
                raise item  # a compute worker failed (see _on_worker_error)
            session = self.sessions.get(conn)
            if session is None:
                continue
            if isinstance(item, Closed):
                raise AgentError(f"device {session.name} disconnected in round {r}: "
                                 f"{item.reason}")
            if item.type is MsgType.ACTIVATION:
                self.workers.submit(session.worker, self._on_activation, r, session, item)
            elif item.type is MsgType.ROUND_END:
                self.workers.submit(session.worker, self._on_round_end, r, session, item)
                pending.discard(session)
            elif item.type is MsgType.CLOCK_PING:
                answer_ping(conn)
            else:
                raise AgentError(f"device {session.name} sent {item.type.name} mid-round")
        self.workers.drain()
        t1 = time.time()
        self._aggregate(r)
        test_loss = accuracy = None   # not evaluated this round (--eval-every)
        if self.run.evaluates_after(r):
            test_loss, accuracy = evaluate(self.model, self.test_x, self.test_y,
                                           map_batches=self.workers.map)
        t2 = time.time()
        if accuracy is not None:
            self.sink.span("server.compute", "eval", t1, t2, round_=r)
        sessions = list(self.sessions.values())
        weight = sum(s.loss_weight for s in sessions)
        self.sink.emit("round", round=r, loss=sum(s.loss_sum for s in sessions) / max(weight, 1),
                       test_loss=test_loss, accuracy=accuracy,
                       samples=sum(s.samples for s in sessions),
                       train_s=t1 - t0, eval_s=t2 - t1, start=t0, end=t2, lr=self.run.lr_at(r),
                       placements={s.name: [s.placement.split_point, s.placement.microbatches]
                                   for s in sessions},
                       **bytes_moved(sessions), **self.side.round_fields(r))

    def _on_worker_error(self, error: BaseException) -> None:
        self.inbox.put((None, error))

    def _link_span(self, r: int, session: DeviceSession, frame: Frame, what: str) -> None:
        self.sink.span("uplink", what, frame.meta["sent_at"] - session.clock_offset,
                       frame.received_at, round_=r, batch=frame.meta.get("batch", -1),
                       mb=frame.meta.get("mb", -1), nbytes=frame.nbytes, host=session.name)

    def _on_activation(self, r: int, session: DeviceSession, frame: Frame) -> None:
        meta = frame.meta
        if session.stage is None or meta.get("round") != r:
            raise AgentError(f"device {session.name} sent an activation it should not have")
        self._link_span(r, session, frame, "activation")
        b, mb, n = int(meta["batch"]), int(meta["mb"]), int(meta["microbatches"])
        with self.sink.timed("server.compute", "train", round_=r, batch=b, mb=mb,
                             device=session.name):
            x = self.side.activation(r, session.name, frame)
            grad, loss = session.stage.train_microbatch(x, frame.tensors["y"],
                                                        float(meta["weight"]))
            session.arrived[b] = session.arrived.get(b, 0) + 1
            if session.arrived[b] == n:
                session.stage.step()
                del session.arrived[b]
        session.loss_sum += loss * float(meta["weight"])
        session.loss_weight += float(meta["weight"])
        if self.side.wants_gradient(r, session.placement):
            session.conn.send(Frame(MsgType.GRADIENT, {"round": r, "batch": b, "mb": mb},
                                    {"g": grad}))

    def _on_round_end(self, r: int, session: DeviceSession, frame: Frame) -> None:
        self._link_span(r, session, frame, "weights")
        session.upload = self.side.upload(r, session.name, frame)
        session.samples = int(frame.meta["samples"])
        if session.stage is None:  # the device trained locally and reports its own loss
            session.loss_sum = float(frame.meta["loss_sum"])
            session.loss_weight = float(frame.meta["loss_steps"])
        self.side.after_round_end(r, session, self.sink)

    def _aggregate(self, r: int) -> None:
        """FedAvg over each device's whole model: its uploaded blocks over its server copy;
        what the strategy freezes stays as it is in the global model."""
        sessions = list(self.sessions.values())
        frozen = self.side.frozen_keys(r)
        states = [{k: v for k, v in {**s.model.state_dict(), **s.upload}.items()
                   if k not in frozen} for s in sessions]
        self.model.load_state_dict(weighted_average(states, [s.samples for s in sessions]),
                                   strict=not frozen)


def bytes_moved(sessions: list[DeviceSession]) -> dict[str, dict[str, int]]:
    """Each device's bytes on the wire this round, from its connection's counters: up
    (received by the server) and down (sent), every frame from ROUND_START on."""
    return {"bytes_up": {s.name: s.conn.bytes_received - s.bytes_at_start[1]
                         for s in sessions},
            "bytes_down": {s.name: s.conn.bytes_sent - s.bytes_at_start[0]
                           for s in sessions}}
