"""Availability traces: when each device of a decentralized run is online, and the leaves
and joins the coordinator plays from them.

A trace is a YAML (or JSON) file:

    format: edgectl-availability/1
    devices:
      device3: [[0, 40], [70, null]]    # online 0-40 s and from 70 s to the end
      device5: [[25, 90]]               # joins at 25 s, leaves at 90 s

Times are seconds since every device online at the start has joined the run (agents
take a few seconds to load, which a trace should not have to guess); null ends an interval at the
run's end. A device the trace does not name is online throughout. The coordinator stops a
device's agent at each interval's end and starts it again at the next interval's start
(edgectl.fleet.sessions); a device that is offline at 0 starts later. Each of these is a
`churn` event in the record; the server's `device_lost` and `device_joined` events say
when the run noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgectl.errors import ConfigError
from edgectl.yaml_text import read_yaml, show_value

FORMAT = "edgectl-availability/1"


@dataclass(frozen=True)
class ChurnAction:
    at_s: float
    device: str
    action: str     # "leave" or "join"


@dataclass(frozen=True)
class AvailabilityTrace:
    path: str
    intervals: dict[str, tuple[tuple[float, float | None], ...]]

    def initial(self, devices: list[str]) -> list[str]:
        """The devices online when the run starts."""
        return [d for d in devices
                if d not in self.intervals or self.intervals[d][0][0] == 0]

    def actions(self) -> list[ChurnAction]:
        """Every leave and join after the start, in time order."""
        found = []
        for device, spans in self.intervals.items():
            for start, end in spans:
                if start > 0:
                    found.append(ChurnAction(start, device, "join"))
                if end is not None:
                    found.append(ChurnAction(end, device, "leave"))
        return sorted(found, key=lambda a: (a.at_s, a.action != "leave", a.device))

    def to_data(self) -> dict:
        return {"format": FORMAT, "devices": {d: [list(s) for s in spans]
                                              for d, spans in self.intervals.items()}}


def load_trace(path: str, devices: list[str]) -> AvailabilityTrace:
    data = read_yaml(path, "pass --churn with an existing availability trace file")
    return trace_from_data(data, path, devices)


def trace_from_data(data: object, where: str, devices: list[str]) -> AvailabilityTrace:
    fix = f'start it with "format: {FORMAT}" and list devices: {{NAME: [[START_S, END_S]]}}'
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else data
        raise ConfigError(f"{where}: unknown availability trace format {show_value(got)}; "
                          f"{fix}")
    unknown = sorted(set(data) - {"format", "devices"})
    if unknown or not isinstance(data.get("devices"), dict):
        raise ConfigError(f"{where}: {'unknown key ' + unknown[0] if unknown else 'no devices'}"
                          f"; {fix}")
    intervals = {}
    for device, spans in data["devices"].items():
        if device not in devices:
            raise ConfigError(f"{where}: devices.{device}: not a device of the fleet "
                              f"({', '.join(devices)})")
        intervals[device] = _spans(spans, f"{where}: devices.{device}")
    trace = AvailabilityTrace(where, intervals)
    if not trace.initial(devices):
        raise ConfigError(f"{where}: no device is online at 0 s; let at least one interval "
                          "start at 0")
    return trace


def _spans(spans: object, where: str) -> tuple[tuple[float, float | None], ...]:
    if not isinstance(spans, list) or not spans:
        raise ConfigError(f"{where}: expected a list of [start_s, end_s] intervals, got "
                          f"{show_value(spans)}")
    out: list[tuple[float, float | None]] = []
    last_end: float | None = -1.0
    for i, span in enumerate(spans):
        ok = isinstance(span, list) and len(span) == 2 and _number(span[0]) and \
            (span[1] is None or _number(span[1]))
        if not ok:
            raise ConfigError(f"{where}[{i}]: expected [start_s, end_s] (end null: to the "
                              f"end), got {show_value(span)}")
        start, end = float(span[0]), None if span[1] is None else float(span[1])
        if last_end is None or start < 0 or start <= last_end or \
                (end is not None and end <= start):
            raise ConfigError(f"{where}[{i}]: intervals must start at 0 s or later, end after "
                              "they start and not overlap, in time order")
        out.append((start, end))
        last_end = end
    return tuple(out)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
