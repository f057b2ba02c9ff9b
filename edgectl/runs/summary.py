"""Summaries computed from a run's metric events (never measured a second time).

Busy time of a resource is the length of the union of its spans, so overlapping spans
(micro-batches in flight on one link) are not counted twice. All figures cover the
training phase of each round, from ROUND_START to the last ROUND_END; evaluation is
reported separately. Pipeline efficiency is the busiest resource's busy time over the
wall time: 1.0 means the bottleneck never waited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from edgectl.planning.adaptive import merged_intervals

SUMMARY_SCHEMA_VERSION = 1   # summary.json's; edgectl/runs/schemas/summary.schema.json


@dataclass(frozen=True)
class ResourceSummary:
    host: str
    resource: str
    busy_s: float
    idle_s: float
    utilization: float
    bytes: int


@dataclass(frozen=True)
class RoundSummary:
    round: int
    wall_s: float
    train_s: float
    eval_s: float
    loss: float | None         # None: no device finished the round (all were lost)
    test_loss: float | None    # None: not evaluated after this round (--eval-every)
    accuracy: float | None
    samples: int
    resources: tuple[ResourceSummary, ...] = ()   # this round's training window alone
    epsilon: float | None = None   # --dp: the accountant's epsilon after this round
    bytes_up: dict[str, int] = field(default_factory=dict)     # per device, this round
    bytes_down: dict[str, int] = field(default_factory=dict)




@dataclass(frozen=True)
class Summary:
    rounds: tuple[RoundSummary, ...]
    resources: tuple[ResourceSummary, ...]
    train_s: float
    batches_per_round: int
    iteration_s: float
    pipeline_efficiency: float
    bottleneck: str
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    predicted_iteration_s: float | None = None   # the plan's, when the run followed one
    membership: tuple[dict, ...] = ()   # devices lost and back, agents restarted, resumes
    epsilon: float | None = None   # --dp: the accountant's epsilon after the last round,
    delta: float | None = None     # for this delta

    def to_json(self) -> dict:
        return {"schema_version": SUMMARY_SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Summary:
        """A summary.json as `to_json` wrote it (KeyError/TypeError/ValueError otherwise)."""
        if data.get("schema_version") != SUMMARY_SCHEMA_VERSION:
            raise ValueError(f"summary schema_version {data.get('schema_version')!r}")

        def resources(rows: list[dict]) -> tuple[ResourceSummary, ...]:
            return tuple(ResourceSummary(**r) for r in rows)

        fields = {k: v for k, v in data.items() if k != "schema_version"}
        return cls(**{**fields, "resources": resources(data["resources"]),
                      "rounds": tuple(RoundSummary(**{**r, "resources": resources(
                          r["resources"])}) for r in data["rounds"])})

    @property
    def prediction_error(self) -> float | None:
        """(predicted - measured) / measured iteration time, when there is a prediction."""
        if not self.predicted_iteration_s or not self.iteration_s:
            return None
        return self.predicted_iteration_s / self.iteration_s - 1

    def server_busy_s(self) -> float:
        return sum(r.busy_s for r in self.resources if r.resource == "server.compute")


def union_length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in merged_intervals(intervals))


def _clip(span: dict, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for w0, w1 in windows:
        s, e = max(span["start"], w0), min(span["end"], w1)
        if e > s:
            out.append((s, e))
    return out


MEMBERSHIP_EVENTS = ("device_lost", "device_joined", "agent_restart", "resumed", "churn")


def summarize(events: list[dict]) -> Summary:
    rounds = [e for e in events if e.get("type") == "round"]
    windows = [(e["start"], e["start"] + e["train_s"]) for e in rounds]
    train_s = sum(w1 - w0 for w0, w1 in windows)
    spans = [e for e in events if e.get("type") == "span" and e.get("what") != "eval"]
    resources = _resources(spans, windows)
    by_round: dict[int, list[dict]] = defaultdict(list)   # one pass, not one per round
    for s in spans:
        by_round[s["round"]].append(s)
    batches = max((e["batches"] for e in events if e.get("type") == "progress"), default=0)
    busiest = max(resources, key=lambda r: r.busy_s, default=None)
    privacy = rounds[-1].get("privacy") if rounds else None
    return Summary(
        rounds=tuple(_round_summary(e, by_round[e["round"]]) for e in rounds),
        resources=tuple(resources),
        train_s=train_s,
        batches_per_round=batches,
        iteration_s=train_s / (batches * len(rounds)) if batches and rounds else 0.0,
        pipeline_efficiency=busiest.busy_s / train_s if busiest and train_s else 0.0,
        bottleneck=f"{busiest.host} {busiest.resource}" if busiest else "",
        bytes_up={r.host: r.bytes for r in resources if r.resource == "uplink"},
        bytes_down={r.host: r.bytes for r in resources if r.resource == "downlink"},
        membership=tuple({k: v for k, v in e.items() if k != "host"} for e in events
                         if e.get("type") in MEMBERSHIP_EVENTS),
        epsilon=privacy and privacy["epsilon"],
        delta=privacy and privacy["delta"],
    )


def _resources(spans: list[dict], windows: list[tuple[float, float]]) -> list[ResourceSummary]:
    """Busy time of each (host, resource) within the windows, and the bytes it moved."""
    length = sum(w1 - w0 for w0, w1 in windows)
    intervals: dict[tuple[str, str], list] = defaultdict(list)
    nbytes: dict[tuple[str, str], int] = defaultdict(int)
    for e in spans:
        key = (e["host"], e["resource"])
        intervals[key].extend(_clip(e, windows))
        nbytes[key] += int(e.get("bytes", 0))
    out = []
    for (host, resource), busy_spans in sorted(intervals.items()):
        busy = union_length(busy_spans)
        out.append(ResourceSummary(host, resource, busy, max(length - busy, 0.0),
                                   busy / length if length else 0.0, nbytes[(host, resource)]))
    return out


def _round_summary(e: dict, spans: list[dict]) -> RoundSummary:
    window = [(e["start"], e["start"] + e["train_s"])]
    return RoundSummary(round=e["round"], wall_s=e["end"] - e["start"], train_s=e["train_s"],
                        eval_s=e["eval_s"], loss=e["loss"], test_loss=e["test_loss"],
                        accuracy=e["accuracy"], samples=e["samples"],
                        resources=tuple(_resources(spans, window)), epsilon=e.get("epsilon"),
                        **{way: e.get(way) or _link_bytes(spans, resource) for way, resource
                           in (("bytes_up", "uplink"), ("bytes_down", "downlink"))})


def _link_bytes(spans: list[dict], resource: str) -> dict[str, int]:
    """Per device, the bytes its link spans of one direction carried: what a round event
    written before the server counted them (bytes_up, bytes_down) is summarized from."""
    moved: dict[str, int] = defaultdict(int)
    for s in spans:
        if s["resource"] == resource:
            moved[s["host"]] += int(s.get("bytes", 0))
    return dict(moved)
