"""A node of a decentralized run (plexus, dpsgd): trains the whole model on its shard and
averages it with its peers, device to device; the server only bootstraps and evaluates.

Each round starts with the server's ROUND_START carrying the membership view: every node
online now, with its peer address and the (round, digest) of the model it holds. From the
round and the view alone the node computes its role (agents.strategies.decentral,
agents.peers): whether it trains and with whom it exchanges, and emits it as a `sample`
event. A node that trains and does not hold the current model fetches it from the node
that does (MODEL_REQUEST to the holder, MODEL back). It then trains its mini-batches,
sends its model to each peer (a MODEL frame on its own authenticated connection to that
peer) and waits for each peer's, until every peer's has arrived or the server has said the
peer left (MEMBERSHIP). It averages what it has, in name order so that nodes with the same
inputs compute the same bytes, and reports the round in ROUND_END: whom it averaged, the
bytes it sent to each peer, its training time, and its new model's digest. The server may
ask for the model (MODEL_REQUEST) to evaluate it.

Frames from peers are read by one dispatcher thread, those from the server by another; a
request is answered from the last published model (a copy made after each aggregation),
so it never sees a model mid-training.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time

import torch

from agents.config import AgentSettings, RunConfig, data_dir_for
from agents.datasets import batch_order, dataset_record, load_dataset, partition_indices
from agents.device import in_background, prefetch, rejoin_server
from agents.events import EventSink
from agents.peers import model_holder
from agents.session import connect_to_server, send_join
from agents.stage import DeviceStage, warm_up_optimizer, weighted_average
from agents.strategies import get_strategy
from agents.strategies.decentral import DecentralSettings, Role
from agents.threads import Thread
from agents.wire import (
    Closed,
    Connection,
    Frame,
    Listener,
    MsgType,
    WireError,
    connect,
    frame_buffers,
)
from partitions.zoo import build_model

log = logging.getLogger("edgectl.node")
FETCH_TIMEOUT_S = 120.0
PEER_CONNECT_S = 1.0   # a peer that refuses connections this long is gone (it listens at once)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and bytes, in name order: equal models, equal digest."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def frame_size(frame: Frame) -> int:
    return sum(memoryview(b).nbytes for b in frame_buffers(frame))


class PeerNode:
    def __init__(self, run: RunConfig, agent: AgentSettings, sink: EventSink):
        self.run, self.agent, self.sink = run, agent, sink
        self.strategy = get_strategy(run.strategy)
        self.settings = DecentralSettings.of(run)
        self.secret = bytes.fromhex(agent.secret)
        self.lock = threading.Condition()
        self.received: dict[tuple[int, str], Frame] = {}   # (round, peer) -> its MODEL
        self.left: dict[int, set[str]] = {}                 # round -> peers the server lost
        self.outgoing: dict[str, Connection] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.published: tuple[int, str, dict] = (0, "", {})   # (round, digest, state copy)
        self.rounds: queue.Queue = queue.Queue()
        self.peer_inbox: queue.Queue = queue.Queue(maxsize=256)
        self.conn: Connection | None = None

    # -- start, join, rejoin --------------------------------------------------------------

    def _load(self) -> None:
        run = self.run
        self.ds = load_dataset(run.dataset, data_dir_for(run, self.agent), test=False)
        shards = partition_indices(self.ds.train_y, len(run.devices), run.partition, run.seed)
        self.shard = shards[run.device_index(self.agent.name)]
        torch.manual_seed(run.seed)   # every node starts from the same model
        self.model = build_model(run.model, self.ds.input_shape, self.ds.num_classes,
                                 batch_norm=run.batch_norm)
        self.batches = len(self.shard) // run.batch_size
        if run.max_batches:
            self.batches = min(self.batches, run.max_batches)
        self._publish(0)

    def serve(self) -> None:
        connecting = in_background(connect_to_server, self.agent)
        self.listener = Listener(self.agent.bind_host, 0, self.secret, lambda c: None,
                                 self.peer_inbox)
        Thread(target=self._peer_loop, daemon=True, name="peers").start()
        warming = in_background(warm_up_optimizer, self.run.optimizer_at(1),
                                self.run.dp is not None)
        self._load()
        warming()
        self._join(connecting())
        self.sink.ready(dataset_record(self.ds))
        try:
            while True:
                item = self.rounds.get()
                if isinstance(item, WireError):
                    self._rejoin(str(item))
                elif item.type is MsgType.DONE:
                    return
                else:
                    try:
                        self._round(item)
                    except WireError as e:
                        if not self.conn.closed:
                            raise
                        self._rejoin(str(e))
        finally:
            self.listener.close()
            self.conn.close()
            for conn in self.outgoing.values():
                conn.close(flush_timeout=1.0)

    def _join(self, connected, rejoin: bool = False) -> None:
        r, digest, _ = self.published
        peer = {"host": self.agent.extra.get("peer_host", "127.0.0.1"),
                "port": self.listener.port, "model_round": r, "digest": digest}
        self.conn = send_join(self.agent, self.sink, connected, samples=len(self.shard),
                              rejoin=rejoin, peer=peer)
        self.conn.start_heartbeat(self.run.heartbeat_interval)
        Thread(target=self._server_loop, args=(self.conn,), daemon=True, name="server").start()

    def _rejoin(self, reason: str) -> None:
        rejoin_server(self.agent, self.sink, reason, lambda c: self._join(c, rejoin=True))

    # -- the two reader threads -------------------------------------------------------------

    def _server_loop(self, conn: Connection) -> None:
        while True:
            try:
                frame = conn.recv(timeout=None, silence=self.run.heartbeat_timeout)
            except WireError as e:
                conn.abort(str(e))
                self.rounds.put(e)
                with self.lock:
                    self.lock.notify_all()
                return
            if frame.type in (MsgType.ROUND_START, MsgType.DONE):
                self.rounds.put(frame)
            elif frame.type is MsgType.MEMBERSHIP:
                with self.lock:
                    self.left.setdefault(int(frame.meta["round"]), set()).add(
                        str(frame.meta["left"]))
                    self.lock.notify_all()
            elif frame.type is MsgType.MODEL_REQUEST:
                self._send_model(conn, "eval")
            elif frame.type is not MsgType.CLOCK_PONG:
                log.warning("server sent %s; ignored", frame.type.name)

    def _peer_loop(self) -> None:
        while True:
            conn, item = self.peer_inbox.get()
            if isinstance(item, Closed):
                continue
            if item.type is MsgType.MODEL_REQUEST:
                self._send_model(conn, "fetch")
            elif item.type is MsgType.MODEL and item.meta.get("kind") == "exchange":
                with self.lock:
                    self.received[(int(item.meta["round"]), str(item.meta["from"]))] = item
                    self.lock.notify_all()
            else:
                log.warning("%s sent %s; ignored", conn.peer, item.type.name)

    def _send_model(self, conn: Connection, kind: str) -> None:
        r, digest, state = self.published
        try:
            conn.send(Frame(MsgType.MODEL, {"from": self.agent.name, "kind": kind,
                                            "model_round": r, "digest": digest}, state))
        except WireError as e:
            log.warning("could not send the model to %s: %s", conn.peer, e)

    # -- one round ------------------------------------------------------------------------

    def _round(self, start: Frame) -> None:
        r = int(start.meta["round"])
        view = start.meta["view"]
        members = [str(v["name"]) for v in view]
        self.addresses = {str(v["name"]): (str(v["host"]), int(v["port"])) for v in view}
        role: Role = self.strategy.role(r, members, self.agent.name, self.settings)
        self.sink.emit("sample", round=r, strategy=self.run.strategy, trains=role.trains,
                       group=list(role.group), peers=list(role.peers), view=members)
        if not role.trains:
            self._end_round(r, trained=False)
            return
        models = {str(v["name"]): (int(v["model_round"]), str(v["digest"])) for v in view}
        fetched = self._catch_up(r, models)
        t0 = time.time()
        loss_sum = self._train(r)
        train_s = time.time() - t0
        mine = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        samples = self.batches * self.run.batch_size
        sent = self._send_to_peers(r, role.peers, mine, samples)
        heard = self._wait_for_peers(r, [p for p in role.peers if p in sent])
        self._aggregate(r, mine, samples, heard)
        self._end_round(r, trained=True, loss_sum=loss_sum, samples=samples, train_s=train_s,
                        contributors=sorted([self.agent.name, *heard]), bytes_to=sent,
                        fetched=fetched, group=list(role.group))

    def _end_round(self, r: int, trained: bool, **fields: object) -> None:
        mr, digest, _ = self.published
        self.conn.send(Frame(MsgType.ROUND_END, {
            "round": r, "trained": trained, "model_round": mr, "digest": digest,
            "batches": self.batches if trained else 0, **fields}))

    def _catch_up(self, r: int, models: dict[str, tuple[int, str]]) -> dict | None:
        """Fetch the current model from its holder when this node's is not it; the next
        holder in order when one does not answer. What was fetched, for ROUND_END.

        This node is one of the candidates, with the model it holds: when it alone holds
        the newest (it trained the last round without its peers), it is the holder and
        fetches nothing. Counting only the others, it once fetched an older model over its
        own: a node that trained round 5 alone took round 4's model for round 6."""
        me, mine = self.agent.name, self.published[:2]
        models = {**models, me: mine}
        tried: list[str] = []
        while (holder := model_holder(r, models, exclude=tried)) is not None:
            if holder == me or not self.strategy.needs_model(mine, models[holder]):
                return None
            tried.append(holder)
            t0 = time.time()
            try:
                reply = self._request_model(holder)
            except (WireError, OSError) as e:
                self.sink.emit("model_fetch_failed", round=r, source=holder, reason=str(e))
                continue
            self.model.load_state_dict(reply.tensors)
            self._publish(int(reply.meta["model_round"]))
            fetched = {"source": holder, "model_round": int(reply.meta["model_round"]),
                       "digest": self.published[1], "bytes": reply.nbytes,
                       "seconds": round(time.time() - t0, 4)}
            self.sink.emit("model_fetch", round=r, **fetched)
            return fetched
        return None

    def _request_model(self, holder: str) -> Frame:
        conn = self._peer(holder)
        conn.send(Frame(MsgType.MODEL_REQUEST, {"from": self.agent.name}))
        while True:
            frame = conn.recv(timeout=FETCH_TIMEOUT_S)
            if frame.type is MsgType.MODEL and frame.meta.get("kind") == "fetch":
                return frame

    def _peer(self, name: str) -> Connection:
        """This node's connection to a peer, authenticated with the run's secret."""
        conn = self.outgoing.get(name)
        if conn is None or conn.closed:
            host, port = self.addresses[name]
            conn = connect(host, port, self.secret, peer=name, timeout=PEER_CONNECT_S)
            conn.start_heartbeat(self.run.heartbeat_interval)
            self.outgoing[name] = conn
        return conn

    def _train(self, r: int) -> float:
        self.model.train()
        stage = DeviceStage(self.model, self.run.optimizer_at(r))
        order = batch_order(self.shard, self.run.batch_size, self.run.seed, r)
        batches = (b for _, b in zip(range(self.batches), order, strict=False))
        loss_sum = 0.0
        for b, (x, y) in enumerate(prefetch(self.ds, batches)):
            with self.sink.timed("device.compute", "train", round_=r, batch=b):
                loss_sum += stage.local_step(x, y)   # forward, loss, backward
                stage.step()
            self.sink.emit("progress", round=r, batch=b + 1, batches=self.batches)
        return loss_sum

    def _send_to_peers(self, r: int, peers: tuple[str, ...], state: dict,
                       samples: int) -> dict[str, int]:
        """Queue this node's trained model to every peer; the bytes sent to each peer that
        could be reached (one that cannot is taken for gone)."""
        sent: dict[str, int] = {}
        with self.lock:
            gone = set(self.left.get(r, ()))
        for name in [p for p in peers if p not in gone]:
            frame = Frame(MsgType.MODEL, {"from": self.agent.name, "kind": "exchange",
                                          "round": r, "samples": samples}, state)
            try:
                self._peer(name).send(frame)
            except (WireError, OSError) as e:
                self.sink.emit("peer_unreachable", round=r, peer=name, reason=str(e))
                continue
            sent[name] = frame_size(frame)
        return sent

    def _wait_for_peers(self, r: int, peers: list[str]) -> dict[str, Frame]:
        """Each peer's model of round r, until all came or the server said the rest left."""
        with self.lock:
            while True:
                gone = self.left.get(r, set())
                waiting = [p for p in peers if (r, p) not in self.received and p not in gone]
                if not waiting or self.conn.closed:
                    break
                self.lock.wait(timeout=1.0)
            heard = {p: self.received.pop((r, p)) for p in peers if (r, p) in self.received}
            for key in [k for k in self.received if k[0] <= r]:
                del self.received[key]
        if self.conn.closed:
            raise WireError("lost the server mid-round")
        return heard

    def _aggregate(self, r: int, mine: dict, samples: int, heard: dict[str, Frame]) -> None:
        states = {self.agent.name: mine, **{p: f.tensors for p, f in heard.items()}}
        counts = {self.agent.name: samples,
                  **{p: int(f.meta["samples"]) for p, f in heard.items()}}
        weights = self.strategy.weights(counts)
        names = sorted(states)
        self.model.load_state_dict(weighted_average([states[n] for n in names],
                                                    [weights[n] for n in names]))
        self._publish(r)

    def _publish(self, r: int) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.published = (r, state_digest(state), state)
