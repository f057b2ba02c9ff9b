"""Plans as data: what the planner chose per device and predicted, printable and saved.

A `Plan` is written by `edgectl plan --save` and read by `edgectl train --plan`; its JSON
carries "plan_version" and every field is checked on reading, with one-line errors that
name the key. See edgectl.planning.planner for how the numbers are predicted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from agents.events import RESOURCES
from edgectl.errors import ConfigError

PLAN_VERSION = 2   # 2: plans say whether raw upload (p = 0) was allowed


class PlanError(ConfigError, ValueError):
    """A plan, or a request for one, is malformed; the one-line message says which part."""


@dataclass(frozen=True)
class Placement:
    split_point: int           # p in 0..L: blocks [0, p) train on the device
    microbatches: int          # N in 1..batch_size; 1 when p = L


def placement_mode(split_point: int, microbatches: int, num_blocks: int) -> str:
    """What a placement runs as, in words: "fl" (every block on the device), "split"
    (one micro-batch: nothing pipelines) or "pipar"; p = 0 adds that raw samples leave
    the device."""
    if split_point >= num_blocks:
        return "fl"
    mode = "split" if microbatches == 1 else "pipar"
    return f"{mode}, raw samples to the server" if split_point == 0 else mode


@dataclass(frozen=True)
class Constraints:
    """What a plan may choose. By default every device keeps at least its first block
    (p >= 1): its raw samples never leave it. `allow_raw_upload` admits p = 0. The other
    fields narrow the search: a least p, a most N, a split point or micro-batch count for
    every device (the other one still chosen), and per-device `pins` (device -> (p, N),
    either None), which win over the fleet-wide values for their device."""

    allow_raw_upload: bool = False
    min_split_point: int = 0
    max_microbatches: int = 16
    split_point: int | None = None
    microbatches: int | None = None
    pins: tuple[tuple[str, int | None, int | None], ...] = ()

    def lowest_split_point(self) -> int:
        return max(self.min_split_point, 0 if self.allow_raw_upload else 1)

    def for_device(self, name: str) -> tuple[int | None, int | None]:
        """The (p, N) this device is pinned to, either None where the plan chooses."""
        for device, p, n in self.pins:
            if device == name:
                return (self.split_point if p is None else p,
                        self.microbatches if n is None else n)
        return self.split_point, self.microbatches


@dataclass(frozen=True)
class DevicePlan:
    device: str
    split_point: int
    microbatches: int
    iteration_s: float         # predicted mini-batch iteration inside the fleet simulation
    busy_s: dict[str, float]   # per RESOURCES, this device's share, per iteration
    bottleneck: str            # busiest resource; the server counts with all devices' work
    uplink_bps: float = 0.0    # the link rates the prediction used (its profile), so a plan
    downlink_bps: float = 0.0  # made for one bandwidth is never mistaken for another's


@dataclass(frozen=True)
class Plan:
    model: str
    num_blocks: int
    batch_size: int
    batches_per_round: int
    devices: tuple[DevicePlan, ...]
    iteration_s: float         # fleet: max over devices
    round_s: float             # batches_per_round * iteration_s + weight exchange
    fl_round_s: float          # all devices p = L; inf unless it fits on every device
    split_round_s: float       # all devices N = 1, best p < L
    speedup_vs_fl: float
    speedup_vs_split: float
    server_busy_s: float       # server compute per iteration, all devices
    split_bottleneck: str      # bottleneck of the slowest device in the split alternative
    allow_raw_upload: bool = False   # whether p = 0 was a candidate

    @property
    def raw_upload_devices(self) -> tuple[str, ...]:
        """The devices whose raw samples this plan sends to the server (p = 0)."""
        return tuple(d.device for d in self.devices if d.split_point == 0)

    def mode_of(self, device: DevicePlan) -> str:
        return placement_mode(device.split_point, device.microbatches, self.num_blocks)

    def describe(self) -> str:
        """One sentence: what was chosen and whether splitting and pipelining pay."""
        raw = (f"; raw samples of {', '.join(self.raw_upload_devices)} go to the server "
               "(allowed by --allow-raw-upload)" if self.raw_upload_devices else "")
        return self._choice() + raw

    def _choice(self) -> str:
        split = [d for d in self.devices if d.split_point < self.num_blocks]
        fl = ("fl does not fit in memory" if math.isinf(self.fl_round_s)
              else f"{self.speedup_vs_fl:.1f}x faster than fl")
        if not split:
            why = {"uplink": "the link is too slow", "downlink": "the link is too slow",
                   "server.compute": "the server is too slow"}.get(
                       self.split_bottleneck, "the device part stays the bottleneck")
            return (f"fl is predicted fastest: {why} for splitting to pay (split predicted "
                    f"{self.speedup_vs_split:.1f}x slower)")
        where = _placements_text(self.devices, self.num_blocks)
        if all(d.microbatches == 1 for d in split):
            return f"split {where} is predicted fastest: pipelining does not pay ({fl})"
        return f"pipar {where} predicted {self.speedup_vs_split:.1f}x faster than split and {fl}"

    def to_json(self) -> dict:
        data = {"plan_version": PLAN_VERSION}
        data.update({k: _finite(getattr(self, k)) for k in _PLAN_FIELDS})
        data["devices"] = [asdict(d) | {"mode": self.mode_of(d)} for d in self.devices]
        data["raw_upload_devices"] = list(self.raw_upload_devices)
        return data

    @classmethod
    def from_json(cls, data: object) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a JSON object, got {type(data).__name__}")
        if data.get("plan_version") != PLAN_VERSION:
            raise PlanError(f"plan_version {data.get('plan_version')!r}: this edgectl reads "
                            f"version {PLAN_VERSION}; run edgectl plan again")
        fields = {k: _field(data, k, kind, "plan") for k, kind in _PLAN_FIELDS.items()}
        devices = data.get("devices")
        if not isinstance(devices, list) or not devices:
            raise PlanError("plan.devices: expected a non-empty list of device plans")
        return cls(**fields, devices=tuple(
            DevicePlan(**{k: _field(d, k, kind, f"plan.devices[{i}]")
                          for k, kind in _DEVICE_FIELDS.items()})
            for i, d in enumerate(devices)))


_PLAN_FIELDS = {"model": str, "num_blocks": int, "batch_size": int, "batches_per_round": int,
                "iteration_s": float, "round_s": float, "fl_round_s": float,
                "split_round_s": float, "speedup_vs_fl": float, "speedup_vs_split": float,
                "server_busy_s": float, "split_bottleneck": str, "allow_raw_upload": bool}
_DEVICE_FIELDS = {"device": str, "split_point": int, "microbatches": int,
                  "iteration_s": float, "busy_s": dict, "bottleneck": str,
                  "uplink_bps": float, "downlink_bps": float}


_MISSING = object()


def _finite(value: object) -> object:
    """JSON has no infinity: an impossible alternative (inf) is written as null."""
    return None if isinstance(value, float) and math.isinf(value) else value


def _field(data: object, key: str, kind: type, where: str) -> object:
    value = data.get(key, _MISSING) if isinstance(data, dict) else _MISSING
    if kind is float and value is None:   # written for an infinite time or speedup
        return math.inf
    if kind is float and _is_number(value):
        return float(value)
    if kind is dict and isinstance(value, dict) and set(value) == set(RESOURCES) \
            and all(_is_number(v) for v in value.values()):
        return {k: float(value[k]) for k in RESOURCES}
    if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    expected = {float: "a number", int: "an integer", str: "a string", bool: "true or false",
                dict: f"an object of numbers with keys {', '.join(RESOURCES)}"}[kind]
    got = "nothing" if value is _MISSING else repr(value)[:60]
    raise PlanError(f"{where}.{key}: expected {expected}, got {got}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _placements_text(devices: tuple[DevicePlan, ...], num_blocks: int) -> str:
    def one(d: DevicePlan) -> str:
        return "fl" if d.split_point == num_blocks else \
            f"N={d.microbatches} at p={d.split_point}"
    texts = [one(d) for d in devices]
    if len(set(texts)) == 1:
        return f"with {texts[0]}"
    pairs = zip(devices, texts, strict=True)
    return "per device (" + ", ".join(f"{d.device}: {t}" for d, t in pairs) + ")"
