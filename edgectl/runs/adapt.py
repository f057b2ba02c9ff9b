"""`edgectl train --adapt`: the coordinator's side of an adaptive pipar run.

The server agent of a paced run waits, before every round after the first, for the
placements of that round on its control channel (agents.control); `Pacer` sends a run's
own placements when only a bandwidth schedule paces it. Either sends, where the run paces
its links and a schedule re-shapes them at round starts, each device's new pacing with the
placements (edgectl.runs.pacing). `Adapter` sees every
event of the run as it is recorded; when the server reports a round, it re-plans from that
round's spans and any bandwidth change a schedule made (edgectl.planning.adaptive),
records a "replan" event (old and new placement, reason, predicted gain, the estimates)
and sends the server the placements to use. It always answers: if re-planning raises
anything, the current placements go and the event says why, so a run never stalls on its
coordinator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from agents.config import RunConfig
from edgectl.errors import EdgectlError, FleetError
from edgectl.network.tc import rate_bits
from edgectl.planning.adaptive import (
    Estimate,
    estimate_fleet,
    measure_round,
    placements_json,
    replan,
)
from edgectl.planning.plans import Constraints, Placement
from edgectl.planning.profiling import FleetProfile

log = logging.getLogger("edgectl.adapt")

Repace = Callable[[], dict[str, tuple[float | None, float | None]]]   # device -> (up, down)


class Adapter:
    def __init__(self, run: RunConfig, fleet: FleetProfile, constraints: Constraints,
                 batches_per_round: int, send: Callable[[dict], None],
                 emit: Callable[[dict], None], repace: Repace | None = None):
        self.run, self.fleet, self.constraints = run, fleet, constraints
        self.batches_per_round, self.send, self.emit = batches_per_round, send, emit
        self.repace = repace
        self.current = {d.name: Placement(d.split_point, d.microbatches) for d in run.devices}
        self.estimate = Estimate(dict(fleet.links), dict.fromkeys(fleet.devices, 1.0), 1.0)
        self.spans: dict[int, list[dict]] = defaultdict(list)
        # rates a schedule set since the last round event, by arrival (not by time: the
        # coordinator's and the server's clocks differ on a real fleet); timed changes
        # arrive from the schedule's own thread
        self.changes: dict[str, tuple[float | None, float | None]] = {}
        self.lock = threading.Lock()

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "span":
            self.spans[event.get("round", -1)].append(event)
        elif kind == "bandwidth":
            up, down = (rate_bits(r) if r else None for r in (event["up"], event["down"]))
            with self.lock:
                for name in event["devices"]:
                    self.changes[name] = (up, down)
        elif kind == "round" and event["round"] < self.run.rounds:   # a round follows
            with self.lock:
                scheduled, self.changes = self.changes, {}
            self._next_round(event, scheduled)

    def _next_round(self, event: dict, scheduled: dict) -> None:
        r = event["round"]
        placed = event.get("placements") or {}
        ran = {n: Placement(*placed[n]) if n in placed else pl for n, pl in self.current.items()}
        record = {"type": "replan", "host": "coordinator", "time": time.time(),
                  "round": r + 1}
        try:
            measured = measure_round(self.spans.pop(r, []), list(self.fleet.devices),
                                     self.fleet.links)
            estimate = estimate_fleet(self.fleet.devices, self.fleet.server, self.estimate,
                                      ran, measured, self.run.batch_size, scheduled)
            decision = replan(self.fleet.devices, self.fleet.server, estimate, ran, r + 1,
                              self.run.batch_size, self.batches_per_round, self.constraints,
                              previous=self.estimate, rescheduled=list(scheduled))
            record |= decision.to_event()
            self.current, self.estimate = decision.new, estimate
        except Exception as e:  # noqa: BLE001 - the server waits: it gets an answer anyway
            record |= {"changed": False, "error": f"{type(e).__name__}: {e}",
                       "old": placements_json(self.current), "new": placements_json(self.current)}
        self.emit(record)
        _send(self.send, _placements(r + 1, placements_json(self.current), self.repace))


class Pacer:
    """A paced run that does not adapt (a bandwidth schedule changes at a round start):
    lets the server start each round, with the run's own placements, once the round
    before has ended and the schedule's change for the next one is in place (the runner
    calls the schedule before its pacer)."""

    def __init__(self, run: RunConfig, send: Callable[[dict], None],
                 repace: Repace | None = None):
        self.run, self.send, self.repace = run, send, repace
        self.placements = {d.name: [d.split_point, d.microbatches] for d in run.devices}

    def on_event(self, event: dict) -> None:
        if event.get("type") == "round" and event["round"] < self.run.rounds:
            _send(self.send, _placements(event["round"] + 1,
                                         event.get("placements") or self.placements,
                                         self.repace))


def _placements(round_: int, devices: dict, repace: Repace | None) -> dict:
    """The placements message for a round; with `repace`, each device's pacing from then
    on (edgectl.runs.pacing: a schedule's change has just re-shaped the links)."""
    message = {"type": "placements", "round": round_, "devices": devices}
    if repace is not None:
        try:
            message["pacing"] = {name: list(rates) for name, rates in repace().items()}
        except EdgectlError as e:   # the placements go anyway: the server waits for them
            log.warning("pacing for round %d left as it was: %s", round_, e)
    return message


def _send(send: Callable[[dict], None], message: dict) -> None:
    """A server that cannot be sent to has exited or is exiting: its own error (or exit
    status) is the run's failure to report, which the session does; not this one."""
    try:
        send(message)
    except FleetError as e:
        log.warning("%s", e)
