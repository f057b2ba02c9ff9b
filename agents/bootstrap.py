"""The server agent of a decentralized run: bootstraps membership and evaluates, nothing else.

It never receives a sample and takes no part in aggregation. It admits the nodes online at
the start (the others join when the churn trace brings them up), and for every round
sends each node online the membership view (name, peer address, and the round and digest
of the model the node holds) in ROUND_START; it does not say who trains: every node works
that out from the round and the view (agents.strategies.decentral). It answers pings and
heartbeats like any server, and when a node is lost (its connection closed, or silent for
the heartbeat timeout) it tells the others with MEMBERSHIP, so nobody waits for a model
that will not come. Once every node online has ended the round (ROUND_END), it asks the
holder of the current model (agents.peers.model_holder) for it, evaluates it on the test
set, and writes the round event: the sample or neighbourhoods the nodes reported, whom each
trained node averaged, bytes per device pair, training time per node, and accuracy. A node
that (re)joins is admitted at the next round start with the model it holds; when sampled,
it fetches the current one from a peer before training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from dataclasses import dataclass, field, replace

import torch

from agents.config import AgentSettings, RunConfig, data_dir_for
from agents.control import ControlChannel
from agents.dataset_files import check_dataset
from agents.datasets import dataset_record, load_dataset
from agents.errors import AgentError
from agents.events import EventSink
from agents.model_file import ModelMeta, save_model
from agents.peers import model_holder
from agents.session import Joined, admit_devices, answer_ping, joined_from, open_listener, refuse
from agents.stage import evaluate
from agents.strategies.decentral import DecentralSettings
from agents.threads import Thread
from agents.wire import Closed, Connection, Frame, MsgType, WireError
from partitions.zoo import build_model

log = logging.getLogger("edgectl.bootstrap")


@dataclass(eq=False)
class Member:
    name: str
    conn: Connection
    host: str
    port: int
    model: tuple[int, str]          # (round its model is from, digest)
    end: dict | None = None         # this round's ROUND_END meta
    bytes_at_start: tuple[int, int] = (0, 0)
    view: dict = field(default_factory=dict)


class BootstrapAgent:
    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink,
                 control: ControlChannel | None = None):
        self.run, self.agent, self.sink = run, agent, sink
        self.settings = DecentralSettings.of(run)
        self.inbox: queue.Queue = queue.Queue(maxsize=256)
        self.members: dict[Connection, Member] = {}
        self.joining: dict[str, Joined] = {}
        self.lost_at: dict[str, float] = {}
        self.load_error: BaseException | None = None

    def _load(self) -> None:
        try:
            ds = load_dataset(self.run.dataset, data_dir_for(self.run, self.agent))
            n_test = min(self.run.eval_samples or len(ds.test_y), len(ds.test_y))
            self.test_x, self.test_y = ds.batch(torch.arange(n_test), False)
            self.model_meta = ModelMeta.for_run(self.run, ds, rounds_completed=0)
            self.model = build_model(self.run.model, ds.input_shape, ds.num_classes,
                                     batch_norm=self.run.batch_norm)
            self.sink.ready(dataset_record(ds))
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            self.load_error = e
            self.inbox.put((None, e))

    def serve(self) -> None:
        check_dataset(self.run.dataset, data_dir_for(self.run, self.agent))
        listener = open_listener(self.agent, self.inbox, self.sink)
        loader = Thread(target=self._load, daemon=True, name="load")
        loader.start()
        try:
            joined = admit_devices(self.inbox, list(self.settings.initial), self.sink)
            loader.join()
            if self.load_error is not None:
                raise self.load_error
            for device in joined:
                self._add(device)
            for r in range(1, self.run.rounds + 1):
                self._admit_returning(r)
                self._run_round(r)
            if self.agent.model_out and self.model_meta.rounds_completed:
                save_model(os.path.expanduser(self.agent.model_out), self.model.state_dict(),
                           self.model_meta)
        finally:
            listener.close()
            conns = [*self.members, *(j.conn for j in self.joining.values())]
            for conn in conns:
                if not conn.closed:
                    with contextlib.suppress(WireError):
                        conn.send(Frame(MsgType.DONE))
            for conn in conns:
                conn.close()

    def _add(self, device: Joined) -> Member:
        peer = device.peer
        member = Member(device.name, device.conn, str(peer.get("host", "127.0.0.1")),
                        int(peer.get("port", 0)),
                        (int(peer.get("model_round", 0)), str(peer.get("digest", ""))))
        self.members[device.conn] = member
        device.conn.start_heartbeat(self.run.heartbeat_interval)
        return member

    def _admit_returning(self, r: int) -> None:
        for name, device in list(self.joining.items()):
            del self.joining[name]
            if device.conn.closed:
                continue
            member = self._add(device)
            lost = self.lost_at.pop(name, None)
            self.sink.emit("device_joined", device=name, round=r,
                           away_s=None if lost is None else round(time.time() - lost, 3),
                           clock_offset=device.clock_offset, rtt=device.rtt,
                           model_round=member.model[0])

    def _view(self) -> list[dict]:
        return [{"name": m.name, "host": m.host, "port": m.port, "model_round": m.model[0],
                 "digest": m.model[1]} for m in sorted(self.members.values(),
                                                        key=lambda m: m.name)]

    def _run_round(self, r: int) -> None:
        t0 = time.time()
        view = self._view()
        if len(view) < self.run.min_devices:
            raise AgentError(f"{len(view)} of {len(self.run.devices)} devices online at "
                             f"round {r}, fewer than --min-devices {self.run.min_devices}")
        for m in list(self.members.values()):
            m.end = None
            m.bytes_at_start = (m.conn.bytes_sent, m.conn.bytes_received)
            with contextlib.suppress(WireError):
                m.conn.send(Frame(MsgType.ROUND_START, {"round": r, "view": view,
                                                        "lr": self.run.lr_at(r)}))
        self._wait(r, lambda: all(m.end is not None for m in self.members.values()))
        t1 = time.time()
        ended = [m for m in self.members.values() if m.end is not None]
        for m in ended:
            m.model = (int(m.end["model_round"]), str(m.end["digest"]))
        evaluated = self._evaluate(r) if self.run.evaluates_after(r) else None
        t2 = time.time()
        if evaluated is not None:
            self.sink.span("server.compute", "eval", t1, t2, round_=r)
        self.sink.emit("round", **self._round_fields(r, ended, evaluated, t0, t1, t2))

    def _round_fields(self, r: int, ended: list[Member], evaluated, t0, t1, t2) -> dict:
        trained = [m for m in ended if m.end.get("trained")]
        steps = sum(int(m.end["batches"]) for m in trained)
        groups = {tuple(m.end.get("group", ())) for m in trained}
        test_loss, accuracy, holder = evaluated or (None, None, None)
        digest = next((m.model[1] for m in ended if m.name == holder), None)
        return dict(
            round=r, loss=sum(float(m.end["loss_sum"]) for m in trained) / steps
            if steps else None, test_loss=test_loss, accuracy=accuracy,
            samples=sum(int(m.end["samples"]) for m in trained), train_s=t1 - t0,
            eval_s=t2 - t1, start=t0, end=t2, lr=self.run.lr_at(r),
            placements={m.name: [self.model.num_blocks, 1] for m in trained},
            devices=sorted(m.name for m in trained),
            bytes_up={m.name: m.conn.bytes_received - m.bytes_at_start[1] for m in ended},
            bytes_down={m.name: m.conn.bytes_sent - m.bytes_at_start[0] for m in ended},
            decentral={
                "strategy": self.run.strategy,
                "view": sorted(m.name for m in ended),
                "sample": sorted({n for g in groups for n in g}) if self.run.strategy ==
                "plexus" else sorted(m.name for m in trained),
                "sample_agreed": len(groups) <= 1 or self.run.strategy != "plexus",
                "aggregation": {m.name: m.end.get("contributors", []) for m in trained},
                "peer_bytes": {m.name: m.end.get("bytes_to", {}) for m in trained},
                "fetches": {m.name: m.end["fetched"] for m in trained if m.end.get("fetched")},
                "train_s": {m.name: round(float(m.end["train_s"]), 4) for m in trained},
                "device_train_s": round(sum(float(m.end["train_s"]) for m in trained), 4),
                "evaluated": holder,
                "evaluated_digest": digest,
            })

    def _evaluate(self, r: int) -> tuple[float, float, str] | None:
        """Ask the holder of round r's model for it (the next one if it is lost meanwhile)
        and evaluate it; None when no node holds a model of this run any more."""
        tried: list[str] = []
        while True:
            models = {m.name: m.model for m in self.members.values()}
            holder = model_holder(r + 1, models, exclude=tried)
            if holder is None:
                return None
            tried.append(holder)
            member = next(m for m in self.members.values() if m.name == holder)
            got: list[Frame] = []
            with contextlib.suppress(WireError):
                member.conn.send(Frame(MsgType.MODEL_REQUEST, {"round": r}))
            self._wait(r, lambda got=got, m=member: bool(got) or m.conn not in self.members,
                       got=got, want=member)
            if got:
                self.model.load_state_dict(got[0].tensors)
                self.model_meta = replace(self.model_meta, rounds_completed=r)
                loss, acc = evaluate(self.model, self.test_x, self.test_y)
                return loss, acc, holder

    def _wait(self, r: int, done, got: list | None = None, want: Member | None = None) -> None:
        """Handle frames until done(): ROUND_ENDs, a requested MODEL, losses, joins."""
        checked = time.monotonic()
        while not done():
            try:
                conn, item = self.inbox.get(timeout=1.0)
            except queue.Empty:
                conn = item = None
            if time.monotonic() - checked >= 1.0:
                self._check_heartbeats(r)
                checked = time.monotonic()
            if conn is None:
                if item is not None:
                    raise item
                continue
            member = self.members.get(conn)
            if member is None:
                self._from_stranger(r, conn, item)
            elif isinstance(item, Closed):
                self._lose(r, member, f"its connection closed ({item.reason})")
            elif item.type is MsgType.ROUND_END and int(item.meta.get("round", -1)) == r:
                member.end = item.meta
            elif item.type is MsgType.MODEL and member is want and got is not None:
                got.append(item)
            elif item.type is MsgType.CLOCK_PING:
                answer_ping(conn)
            else:
                log.warning("node %s sent %s; ignored", member.name, item.type.name)

    def _check_heartbeats(self, r: int) -> None:
        for member in list(self.members.values()):
            quiet = member.conn.silent_for()
            if quiet > self.run.heartbeat_timeout:
                self._lose(r, member, f"nothing heard for {quiet:.0f} s (heartbeat timeout "
                                      f"{self.run.heartbeat_timeout:g} s)")

    def _lose(self, r: int, member: Member, reason: str) -> None:
        """A node left: drop it, and tell every other node so none waits for its model."""
        member.conn.abort(f"lost: {reason}")
        del self.members[member.conn]
        self.lost_at[member.name] = time.time()
        self.sink.emit("device_lost", device=member.name, round=r, reason=reason,
                       round_discarded=member.end is None)
        for other in self.members.values():
            with contextlib.suppress(WireError):
                other.conn.send(Frame(MsgType.MEMBERSHIP, {"round": r, "left": member.name}))

    def _from_stranger(self, r: int, conn: Connection, item: object) -> None:
        if isinstance(item, Closed) or conn.closed:
            return
        if item.type is MsgType.CLOCK_PING:
            answer_ping(conn)
            return
        if item.type is MsgType.JOIN and item.meta.get("device") in \
                {d.name for d in self.run.devices}:
            device = joined_from(conn, item)
            for stale in [m for m in self.members.values() if m.name == device.name]:
                self._lose(r, stale, "it came back on a new connection")
            if (earlier := self.joining.get(device.name)) is not None:
                earlier.conn.abort("replaced by a newer connection")
            self.joining[device.name] = device
            return
        refuse(conn, item)
