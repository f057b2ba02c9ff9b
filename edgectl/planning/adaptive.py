"""Re-planning from what a run measured: FedAdapt's idea, done with the planner.

After each round of an adaptive run (`edgectl train --adapt`), `measure_round` reads that
round's spans and estimates, per device, the link rates it saw and how long its compute and
its share of the server's compute took per iteration; `replan` turns the profiles the run
started from into what those measurements say (`estimate_fleet`) and plans again.

- Links: the bytes of a device's frames each way (activations, gradients, the weights at
  the round's start and end) over the time its link was busy with them (the union of their
  spans), less half a round trip for each busy stretch. A link whose busy time is mostly
  round trips (a fast link, never the bottleneck) says little about its rate and keeps the
  rate last known. A bandwidth change since the round started (a schedule) wins over the
  measurement: the next round runs at the new rate, which the measured round never saw;
  and the rate it set stays known until a round measures the link again.
- Compute: the median over the round's mini-batches of a device's compute per iteration
  (forward, backward, step) against what its profile predicts for the placement it ran,
  and likewise the server's work for all devices: the ratio scales every block time of the
  profile (contention from agents sharing cores, throttling, a slower host than profiled).

Ratios are always taken against the profiles the run started from, so estimates never
compound. A new placement is taken only when it is predicted at least ADAPT_TOLERANCE
faster than keeping the current one under the same estimates. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from edgectl.planning.iteration import device_tasks
from edgectl.planning.planner import plan
from edgectl.planning.plans import Constraints, Placement
from profiles.records import ComputeProfile, LinkProfile

MIN_SERIALIZATION_SHARE = 0.2   # below this share of busy time, a link's rate is unknown
NOTABLE = 0.25                  # an estimate this far from the last one is named as a reason
RELEVANT = 0.1                  # ... if its resource takes this share of the iteration
ADAPT_TOLERANCE = 0.1           # a new placement must be predicted this much faster: the
                                # estimates of one short round are noisy, and a placement
                                # that flips back and forth on noise helps nobody


@dataclass(frozen=True)
class Measured:
    """What one round measured for one device; None where it could not tell."""

    uplink_bps: float | None = None
    downlink_bps: float | None = None
    device_s: float | None = None      # its compute per iteration (median over mini-batches)
    server_s: float | None = None      # the server's compute for it per iteration


@dataclass(frozen=True)
class Estimate:
    """The fleet as the next round is expected to see it."""

    links: dict[str, LinkProfile]
    device_factor: dict[str, float]    # measured / profiled compute, per device
    server_factor: float

    def to_json(self) -> dict:
        return {"devices": {n: {"uplink_bps": round(link.uplink_bps),
                                "downlink_bps": round(link.downlink_bps),
                                "compute_factor": round(self.device_factor[n], 3)}
                            for n, link in self.links.items()},
                "server_compute_factor": round(self.server_factor, 3)}


@dataclass(frozen=True)
class Replan:
    round: int                          # the round the placements are for
    old: dict[str, Placement]
    new: dict[str, Placement]           # = old when kept
    changed: bool
    predicted_old_s: float              # round time of `old` under the new estimate
    predicted_new_s: float
    reason: str
    estimate: Estimate

    @property
    def gain(self) -> float:
        return self.predicted_old_s / self.predicted_new_s if self.predicted_new_s else 1.0

    def to_event(self) -> dict:
        return {"type": "replan", "round": self.round, "changed": self.changed,
                "old": placements_json(self.old), "new": placements_json(self.new),
                "predicted_old_round_s": self.predicted_old_s,
                "predicted_new_round_s": self.predicted_new_s,
                "predicted_gain": self.gain, "reason": self.reason,
                "estimate": self.estimate.to_json()}


def placements_json(placements: dict[str, Placement]) -> dict:
    """device -> [p, N], as events and the control channel carry placements."""
    return {n: [pl.split_point, pl.microbatches] for n, pl in placements.items()}


def measure_round(spans: list[dict], devices: list[str],
                  links: dict[str, LinkProfile]) -> dict[str, Measured]:
    """Per device, what the span events of one round say (see the module docstring)."""
    compute: dict[tuple[str, str], dict[int, float]] = defaultdict(lambda: defaultdict(float))
    transfers: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in spans:
        resource, duration = e.get("resource"), e["end"] - e["start"]
        if resource == "device.compute":
            compute["device", e["host"]][e.get("batch", -1)] += duration
        elif resource == "server.compute" and e.get("device"):
            compute["server", e["device"]][e.get("batch", -1)] += duration
        elif resource in ("uplink", "downlink"):
            transfers[resource, e["host"]].append(e)
    out = {}
    for name in devices:
        rtt = links[name].rtt_s if name in links else 0.0
        out[name] = Measured(
            _link_rate(transfers.get(("uplink", name), []), rtt),
            _link_rate(transfers.get(("downlink", name), []), rtt),
            _median_per_batch(compute.get(("device", name))),
            _median_per_batch(compute.get(("server", name))))
    return out


def _median_per_batch(per_batch: dict[int, float] | None) -> float | None:
    values = [v for b, v in (per_batch or {}).items() if b >= 0]
    return statistics.median(values) if values else None


def _link_rate(spans: list[dict], rtt_s: float) -> float | None:
    """Bits per second over the link's busy stretches, less half a round trip each."""
    nbytes = sum(int(e.get("bytes", 0)) for e in spans)
    stretches = merged_intervals([(e["start"], e["end"]) for e in spans])
    busy = sum(end - start for start, end in stretches)
    serializing = busy - len(stretches) * rtt_s / 2
    if nbytes <= 0 or busy <= 0 or serializing < MIN_SERIALIZATION_SHARE * busy:
        return None
    return nbytes * 8 / serializing


def merged_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The intervals merged where they overlap or touch, in order: a resource's busy
    stretches from its spans."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def estimate_fleet(devices: dict[str, ComputeProfile], server: ComputeProfile,
                   known: Estimate, ran: dict[str, Placement],
                   measured: dict[str, Measured], batch_size: int,
                   scheduled: dict[str, tuple[float | None, float | None]] | None = None
                   ) -> Estimate:
    """The link rates and compute factors the next round is expected to see, from the
    compute profiles the run started from, the estimate last `known` (at first the
    profiles': their links, factors 1), the placements the measured round `ran`, what it
    measured, and rates a schedule set since it (device -> (up, down) bits/s). What the
    round did not measure (no link use at p = L, no server work for fl) stays as known."""
    scheduled = scheduled or {}
    new_links, factor = {}, {}
    server_measured = server_predicted = 0.0
    for name, dev in devices.items():
        m, link = measured.get(name, Measured()), known.links[name]
        up_set, down_set = scheduled.get(name, (None, None))
        new_links[name] = dataclasses.replace(
            link, uplink_bps=up_set or m.uplink_bps or link.uplink_bps,
            downlink_bps=down_set or m.downlink_bps or link.downlink_bps)
        tasks = device_tasks(dev, server, link, ran[name], batch_size)
        factor[name] = _ratio(m.device_s, tasks.device_compute_s, known.device_factor[name])
        if m.server_s is not None and tasks.server_s:
            server_measured += m.server_s
            server_predicted += sum(tasks.server_s)
    server_factor = _ratio(server_measured or None, server_predicted, known.server_factor)
    return Estimate(new_links, factor, server_factor)


def _ratio(measured: float | None, predicted: float, otherwise: float) -> float:
    return measured / predicted if measured and predicted > 0 else otherwise


def scaled(profile: ComputeProfile, factor: float) -> ComputeProfile:
    """The profile with every block's forward and backward time and the step cost times
    `factor`."""
    if factor == 1.0:
        return profile
    blocks = tuple(dataclasses.replace(b, forward_s=tuple(t * factor for t in b.forward_s),
                                       backward_s=tuple(t * factor for t in b.backward_s))
                   for b in profile.blocks)
    return dataclasses.replace(profile, blocks=blocks,
                               step_s_per_param=profile.step_s_per_param * factor)


def _alone(profile: ComputeProfile) -> ComputeProfile:
    return dataclasses.replace(profile, host_id="")


def replan(devices: dict[str, ComputeProfile], server: ComputeProfile,
           estimate: Estimate, current: dict[str, Placement], round_: int, batch_size: int,
           batches_per_round: int, constraints: Constraints = Constraints(),
           previous: Estimate | None = None, tolerance: float = ADAPT_TOLERANCE,
           rescheduled: Sequence[str] = ()) -> Replan:
    """Plan round `round_` under `estimate`; keep `current` unless the new plan is
    predicted at least `tolerance` faster. `previous`: the estimate the current placements
    were chosen under, and `rescheduled`: the devices a bandwidth schedule changed since,
    both for the reason given."""
    # measured compute already includes the contention of hosts sharing a machine, so the
    # shared-cores floor (edgectl.planning.iteration) would count it twice: off here
    est_devices = {n: _alone(scaled(d, estimate.device_factor[n])) for n, d in devices.items()}
    est_server = _alone(scaled(server, estimate.server_factor))
    args = (est_devices, est_server, estimate.links, batch_size, batches_per_round)
    best = plan(*args, constraints=constraints)
    kept = plan(*args, constraints=constraints, fixed=current)
    new = {d.device: Placement(d.split_point, d.microbatches) for d in best.devices}
    changed = new != current and kept.round_s >= best.round_s * (1 + tolerance)
    share = {d.device: {r: d.busy_s[r] / d.iteration_s if d.iteration_s else 0.0
                        for r in d.busy_s} for d in (best.devices + kept.devices)}
    return Replan(round_, dict(current), new if changed else dict(current), changed,
                  kept.round_s, best.round_s if changed else kept.round_s,
                  _reason(estimate, previous, share, rescheduled), estimate)


def _reason(now: Estimate, before: Estimate | None,
            share: dict[str, dict[str, float]], rescheduled: Sequence[str] = ()) -> str:
    """The estimates that moved notably since the current placements were chosen, among
    resources that take a relevant share of an iteration (the busiest share of the kept
    and the new placement): a fast link's jitter is no reason. Led by the devices a
    bandwidth schedule changed, if any."""
    schedule = (f"bandwidth schedule changed {', '.join(sorted(rescheduled))}; "
                if rescheduled else "")
    return schedule + _moved_estimates(now, before, share)


def _moved_estimates(now: Estimate, before: Estimate | None,
                     share: dict[str, dict[str, float]]) -> str:
    if before is None:
        return "first estimate"

    def relevant(name: str, resource: str) -> bool:
        return share.get(name, {}).get(resource, 0.0) >= RELEVANT

    notes = []
    for name, link in now.links.items():
        was = before.links[name]
        for direction, rate, old in (("uplink", link.uplink_bps, was.uplink_bps),
                                     ("downlink", link.downlink_bps, was.downlink_bps)):
            if _moved(rate, old) and relevant(name, direction):
                notes.append(f"{name} {direction} {_rate(rate)} (was {_rate(old)})")
        if _moved(now.device_factor[name], before.device_factor[name]) \
                and relevant(name, "device.compute"):
            notes.append(f"{name} compute x{now.device_factor[name]:.2f} of its profile "
                         f"(was x{before.device_factor[name]:.2f})")
    if _moved(now.server_factor, before.server_factor) and any(
            relevant(name, "server.compute") for name in now.links):
        notes.append(f"server compute x{now.server_factor:.2f} of its profile "
                     f"(was x{before.server_factor:.2f})")
    return "; ".join(notes) or "no notable change measured"


def _rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def _moved(now: float, before: float) -> bool:
    return abs(now - before) > NOTABLE * max(abs(before), 1e-12)
