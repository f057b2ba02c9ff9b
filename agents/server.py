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

Devices come and go. A device whose connection closes, or from which nothing has arrived
for the run's heartbeat timeout (devices send heartbeats while they compute), is lost: a
`device_lost` event says who, when, in which round and why, its partial round is discarded
and the round ends with the devices that remain, FedAvg weighting those that finished by
their samples. Fewer than `min_devices` left fails the run, with the last checkpoint kept.
The listener stays open the whole run: a device that comes back (its agent reconnecting, or
restarted by the coordinator) joins at the next round start with the current global model
(`device_joined`). After every round the server writes a checkpoint (agents.checkpoint);
a resumed run starts from one (AgentSettings.init_model, first_round).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import time
from dataclasses import dataclass, field, replace

import torch

from agents.checkpoint import read_checkpoint, save_checkpoint
from agents.config import AgentSettings, RunConfig, data_dir_for
from agents.control import ControlChannel, pacing_from, placements_from
from agents.dataset_files import check_dataset
from agents.datasets import dataset_record, load_dataset
from agents.errors import AgentError
from agents.events import EventSink
from agents.model_file import ModelMeta, load_model, save_model
from agents.privacy import (
    PrivacyAccountant,
    PrivateServerStage,
    require_opacus,
    trainable_parts,
    warm_up_private,
)
from agents.session import (
    Joined,
    admit_devices,
    answer_ping,
    joined_from,
    open_listener,
    refuse,
)
from agents.stage import ServerStage, evaluate, warm_up_optimizer, weighted_average
from agents.strategies import Placement, get_strategy
from agents.threads import Thread
from agents.wire import Closed, Connection, Frame, MsgType, WireError
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
    lost: bool = False                      # given up on: its work is dropped, never averaged
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
        self.sessions: dict[Connection, DeviceSession] = {}   # the devices in the run now
        self.pending: set[DeviceSession] = set()     # this round's, until their ROUND_END
        self.finished: list[DeviceSession] = []      # this round's, in the order they ended
        self.joining: dict[str, Joined] = {}         # came back; admitted at the next round
        self.lost_at: dict[str, float] = {}
        self.checkpoint_round: int | None = None
        self.resumed_privacy: dict[str, dict] = {}   # device -> privacy spent before a resume
        self.load_error: BaseException | None = None
        self.privacy: PrivacyAccountant | None = None   # the accountant of a --dp run
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
            if self.agent.init_model:
                self._load_initial_model(self.agent.init_model, ds)
            self._warming.join()   # no two threads import torch's modules at once
            if self.run.dp is not None:   # Opacus's first step, untimed (agents.privacy)
                warm_up_private(self.model, self.run, self.test_x[:2], self.test_y[:2])
            self.side.prepare(self.model)
            self.sink.ready(dataset_record(ds))
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            self.load_error = e
            self.inbox.put((None, e))

    def _load_initial_model(self, path: str, ds) -> None:
        """Start from a model file (a resumed run's checkpoint, or --init-from) made for
        this very model and input."""
        loaded, meta = load_model(os.path.expanduser(path))
        want = (self.run.model, tuple(ds.input_shape), ds.num_classes, self.run.batch_norm)
        got = (meta.model, tuple(meta.input_shape), meta.num_classes, meta.batch_norm)
        if got != want:
            raise AgentError(f"{path} holds {meta.model} for {meta.describe_input()} "
                             f"(batch norm {meta.batch_norm}), but this run trains "
                             f"{self.run.model} on {ds.name} (batch norm {self.run.batch_norm});"
                             " start from a model file of the same model and dataset")
        self.model.load_state_dict(loaded.state_dict())
        if self.run.dp is not None and self.agent.first_round > 1:   # a resumed --dp run
            spent = read_checkpoint(path).round_event.get("privacy") or {}
            self.resumed_privacy = spent.get("devices", {})

    def serve(self) -> None:
        check_dataset(self.run.dataset, data_dir_for(self.run, self.agent))
        if self.run.dp is not None:
            require_opacus()   # before the warm-up thread imports torch's compiler stack
        listener = open_listener(self.agent, self.inbox, self.sink)
        self._warming = Thread(target=warm_up_optimizer, daemon=True, name="warm-up",
                               args=(self.run.optimizer_at(1), self.run.dp is not None))
        self._warming.start()   # DP, adam: torch.optim's first use imports torch._dynamo (~1 s)
        loader = Thread(target=self._load, daemon=True, name="load")
        loader.start()
        try:
            joined = admit_devices(self.inbox, [d.name for d in self.run.devices], self.sink)
            loader.join()
            if self.load_error is not None:
                raise self.load_error
            self.side.check_fleet(self.model, {d.name: d.samples for d in joined})
            for device in joined:
                self._add_session(device)
            if self.run.dp is not None:
                self.privacy = PrivacyAccountant(self.run.dp, self.run.batch_size,
                                                 {d.name: d.samples for d in joined})
                for name, spent in self.resumed_privacy.items():   # a resumed run's steps
                    self.privacy.record(name, int(spent["steps"]))
            first = self.agent.first_round   # rounds count from 1, as users count
            for r in range(first, self.run.rounds + 1):
                if r > first and self.run.paced:
                    self._take_placements(r)
                self._admit_returning(r)
                self._run_round(r)
            if self.agent.model_out:   # with what it takes to use it (agents.model_file)
                save_model(os.path.expanduser(self.agent.model_out), self.model.state_dict(),
                           replace(self.model_meta, rounds_completed=self.run.rounds))
        finally:
            self.workers.close()
            listener.close()
            conns = [*self.sessions, *(j.conn for j in self.joining.values())]
            for conn in conns:
                if not conn.closed:
                    conn.send(Frame(MsgType.DONE))
            for conn in conns:
                conn.close()

    def _add_session(self, device: Joined) -> DeviceSession:
        worker = worker_of(self.run.device_index(device.name), self.workers.count)
        session = DeviceSession(device.name, device.conn, device.clock_offset,
                                copy.deepcopy(self.model), worker)
        self.sessions[device.conn] = session
        device.conn.start_heartbeat(self.run.heartbeat_interval)
        self.side.device_joined(device.name)   # a device (back) from scratch
        return session

    def _admit_returning(self, r: int) -> None:
        """Devices that came back since the last round start join now, with the current
        global model (sent with ROUND_START)."""
        for name, device in list(self.joining.items()):
            del self.joining[name]
            if device.conn.closed:
                continue
            self._add_session(device)
            lost = self.lost_at.pop(name, None)
            self.sink.emit("device_joined", device=name, round=r,
                           away_s=None if lost is None else round(time.time() - lost, 3),
                           clock_offset=device.clock_offset, rtt=device.rtt)

    def _take_placements(self, r: int) -> None:
        """A paced run: wait for the coordinator's placements for round r (see the module
        docstring)."""
        message = self.control.expect("placements", timeout=PLACEMENTS_TIMEOUT)
        placed = placements_from(message, r, list(self.specs), self.model.num_blocks,
                                 self.run.batch_size)
        rates = pacing_from(message, list(self.specs))   # the links' pacing, where it changes
        for name, (p, n) in placed.items():
            if p == 0:
                self.run.check_raw_upload(name)
            spec = self.specs[name]
            up, down = rates.get(name, (spec.pace_up_bps, spec.pace_down_bps))
            self.specs[name] = replace(spec, split_point=p, microbatches=n, pace_up_bps=up,
                                       pace_down_bps=down)

    def _start_round(self, r: int, session: DeviceSession) -> None:
        spec = self.specs[session.name]
        session.placement = self.side.placement(
            r, self.strategy.place(spec, self.model.num_blocks, self.run.batch_size),
            self.model.num_blocks)
        session.model.load_state_dict(self.model.state_dict())
        device_part, server_part = split(session.model, session.placement.split_point)
        session.stage = (self._stage(r, session, server_part)
                         if server_part.num_blocks else None)
        session.arrived.clear()
        session.loss_sum = session.loss_weight = 0.0
        session.upload = None
        session.bytes_at_start = (session.conn.bytes_sent, session.conn.bytes_received)
        self._pace(r, session, spec.pace_down_bps)
        meta, tensors = self.side.round_start(r, session.name, session.placement, device_part)
        with contextlib.suppress(WireError):   # closed: the round loop loses it on its Closed
            session.conn.send(Frame(MsgType.ROUND_START, {
                "round": r, "split_point": session.placement.split_point,
                "microbatches": session.placement.microbatches,
                "pace_up_bps": spec.pace_up_bps, **meta}, tensors))

    def _pace(self, r: int, session: DeviceSession, bps: float | None) -> None:
        """Pace what goes down to a device from round r on (agents.wire.Connection.pace);
        a "pacing" event says so when the rate changes, with the cap the kernel holds."""
        if session.conn.pace_bps == bps or session.conn.closed:   # a new one is unpaced
            return
        held = session.conn.pace(bps)
        self.sink.emit("pacing", device=session.name, round=r, direction="down",
                       asked_bps=bps, held_bps=held)

    def _stage(self, r: int, session: DeviceSession, server_part: torch.nn.Module) -> ServerStage:
        """A device's server stage this round: plain, or under DP-SGD (agents.privacy)."""
        p = session.placement.split_point
        gradient = self.side.wants_gradient(r, session.placement)
        if self.run.dp is None:
            return ServerStage(server_part, self.run.optimizer_at(r), input_grad=gradient)
        return PrivateServerStage(server_part, self.run.optimizer_at(r), self.run,
                                  parts=trainable_parts(session.model, p), round_=r,
                                  device_index=self.run.device_index(session.name),
                                  input_grad=gradient)

    def _run_round(self, r: int) -> None:
        t0 = time.time()
        self.finished = []
        self.pending = set(self.sessions.values())
        for session in list(self.pending):
            self._start_round(r, session)
        checked = time.monotonic()
        while self.pending:
            try:
                conn, item = self.inbox.get(timeout=1.0)
            except queue.Empty:
                conn = item = None
            if time.monotonic() - checked >= 1.0:
                self._check_heartbeats(r)
                checked = time.monotonic()
            if conn is None:
                if item is not None:
                    raise item  # a compute worker failed (see _on_worker_error)
                continue
            session = self.sessions.get(conn)
            if session is None:
                self._from_stranger(r, conn, item)
            elif isinstance(item, Closed):
                self._lose(r, session, f"its connection closed ({item.reason})")
            elif item.type is MsgType.ACTIVATION:
                self.workers.submit(session.worker, self._on_activation, r, session, item)
            elif item.type is MsgType.ROUND_END:
                self.workers.submit(session.worker, self._on_round_end, r, session, item)
                self.pending.discard(session)
                self.finished.append(session)
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
        done = self.finished
        weight = sum(s.loss_weight for s in done)
        result = dict(round=r, loss=sum(s.loss_sum for s in done) / weight if weight else None,
                      test_loss=test_loss, accuracy=accuracy,
                      samples=sum(s.samples for s in done),
                      train_s=t1 - t0, eval_s=t2 - t1, start=t0, end=t2, lr=self.run.lr_at(r),
                      placements={s.name: [s.placement.split_point, s.placement.microbatches]
                                  for s in done},
                      devices=[s.name for s in done], **bytes_moved(done),
                      **self.side.round_fields(r), **self._privacy_spent(done))
        self._checkpoint(r, result)
        self.sink.emit("round", **result)

    def _checkpoint(self, r: int, result: dict) -> None:
        """Write the checkpoint of round r before its round event: a round on record always
        has its checkpoint (see agents.checkpoint)."""
        if not self.agent.checkpoint_out:
            return
        t0 = time.time()
        path = os.path.expanduser(self.agent.checkpoint_out)
        save_checkpoint(path, self.model.state_dict(),
                        replace(self.model_meta, rounds_completed=r), r,
                        {name: (spec.split_point, spec.microbatches)
                         for name, spec in self.specs.items()},
                        {"type": "round", "host": self.sink.host, "time": time.time(), **result})
        self.checkpoint_round = r
        self.sink.emit("checkpoint", round=r, bytes=os.path.getsize(path),
                       save_s=round(time.time() - t0, 4))

    def _check_heartbeats(self, r: int) -> None:
        for session in list(self.sessions.values()):
            quiet = session.conn.silent_for()
            if quiet > self.run.heartbeat_timeout:
                self._lose(r, session, f"nothing heard for {quiet:.0f} s (heartbeat timeout "
                                       f"{self.run.heartbeat_timeout:g} s)")

    def _lose(self, r: int, session: DeviceSession, reason: str) -> None:
        """Give up on a device: drop it (and its partial round) and say so; fail the run
        when fewer than min_devices remain."""
        session.lost = True
        session.conn.abort(f"lost: {reason}")
        del self.sessions[session.conn]
        partial = session in self.pending
        self.pending.discard(session)
        self.lost_at[session.name] = time.time()
        self.sink.emit("device_lost", device=session.name, round=r, reason=reason,
                       round_discarded=partial)
        log.warning("device %s lost in round %d: %s", session.name, r, reason)
        if len(self.sessions) + len(self.joining) < self.run.min_devices:
            kept = (f"the checkpoint of round {self.checkpoint_round} is kept; continue with "
                    "`edgectl train --resume RUN_DIR`" if self.checkpoint_round
                    else "no round completed, so there is no checkpoint")
            raise AgentError(f"{len(self.sessions)} of {len(self.run.devices)} devices remain "
                             f"after {session.name} was lost in round {r} ({reason}), fewer "
                             f"than --min-devices {self.run.min_devices}; {kept}")

    def _from_stranger(self, r: int, conn: Connection, item: object) -> None:
        """A connection not in the run: a device coming back (it pings, then joins), or what
        a lost device's connection still had queued (dropped)."""
        if isinstance(item, Closed) or conn.closed:
            return
        if item.type is MsgType.CLOCK_PING:
            answer_ping(conn)
            return
        names = set(self.specs)
        if item.type is MsgType.JOIN and item.meta.get("device") in names:
            device = joined_from(conn, item)
            for stale in [s for s in self.sessions.values() if s.name == device.name]:
                self._lose(r, stale, "it came back on a new connection")
            if (earlier := self.joining.get(device.name)) is not None:
                earlier.conn.abort("replaced by a newer connection")
            self.joining[device.name] = device
            log.info("device %s is back; it joins at the next round", device.name)
            return
        refuse(conn, item)

    def _privacy_spent(self, sessions: list[DeviceSession]) -> dict:
        """A --dp run's round event fields: the accountant's epsilon after this round's
        steps (one per mini-batch each device trained), and what it came from."""
        if self.privacy is None:
            return {}
        for s in sessions:
            self.privacy.record(s.name, s.samples // self.run.batch_size)
        spent = self.privacy.to_json()
        return {"epsilon": spent["epsilon"], "privacy": spent}

    def _on_worker_error(self, error: BaseException) -> None:
        self.inbox.put((None, error))

    def _link_span(self, r: int, session: DeviceSession, frame: Frame, what: str) -> None:
        self.sink.span("uplink", what, frame.meta["sent_at"] - session.clock_offset,
                       frame.received_at, round_=r, batch=frame.meta.get("batch", -1),
                       mb=frame.meta.get("mb", -1), nbytes=frame.nbytes, host=session.name)

    def _on_activation(self, r: int, session: DeviceSession, frame: Frame) -> None:
        if session.lost:
            return   # given up on: its round is discarded
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
            try:
                session.conn.send(Frame(MsgType.GRADIENT, {"round": r, "batch": b, "mb": mb},
                                        {"g": grad}))
            except WireError:
                if not session.conn.closed:
                    raise   # closed: the round loop loses the device on its Closed

    def _on_round_end(self, r: int, session: DeviceSession, frame: Frame) -> None:
        self._link_span(r, session, frame, "weights")
        session.upload = self.side.upload(r, session.name, frame)
        session.samples = int(frame.meta["samples"])
        if session.stage is not None:
            session.stage.close()   # every activation of the round came before this
        if session.stage is None:  # the device trained locally and reports its own loss
            session.loss_sum = float(frame.meta["loss_sum"])
            session.loss_weight = float(frame.meta["loss_steps"])
        self.side.after_round_end(r, session, self.sink)

    def _aggregate(self, r: int) -> None:
        """FedAvg over each finished device's whole model: its uploaded blocks over its
        server copy; what the strategy freezes stays as it is in the global model. A device
        lost mid-round has no part in it; a round that none finished (every device lost,
        one already back) leaves the model as it was."""
        done = self.finished
        if not done:
            return
        frozen = self.side.frozen_keys(r)
        states = [{k: v for k, v in {**s.model.state_dict(), **s.upload}.items()
                   if k not in frozen} for s in done]
        self.model.load_state_dict(weighted_average(states, [s.samples for s in done]),
                                   strict=not frozen)


def bytes_moved(sessions: list[DeviceSession]) -> dict[str, dict[str, int]]:
    """Each device's bytes on the wire this round, from its connection's counters: up
    (received by the server) and down (sent), every frame from ROUND_START on."""
    return {"bytes_up": {s.name: s.conn.bytes_received - s.bytes_at_start[1]
                         for s in sessions},
            "bytes_down": {s.name: s.conn.bytes_sent - s.bytes_at_start[0]
                           for s in sessions}}
