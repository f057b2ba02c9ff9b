"""Changing bandwidth during a run, as the changing-bandwidth experiments of PiPar and
FedAdapt do: `edgectl train --bandwidth-schedule FILE`.

The file is a YAML list of changes; each happens at a time (seconds since the training
started) or at the start of a round (counting from 1), on some devices (default all), to
new rates:

    - {at_s: 30, up: 5mbit, down: 10mbit}
    - {at_round: 2, hosts: [pi1], up: 1mbit, down: 2mbit}

Each change re-shapes through edgectl.network.shaping and is written to the run record as a
"bandwidth" event (what, where, when), so plots and summaries see it. A round's change
is applied when the previous round's result arrives, which is when the server starts the
round; it can trail that start by the time one shaping command takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from edgectl.errors import ConfigError, EdgectlError
from edgectl.fleet.inventory import Inventory
from edgectl.yaml_text import read_yaml, show_value

KEYS = ("at_s", "at_round", "hosts", "up", "down")


@dataclass(frozen=True)
class BandwidthChange:
    at_s: float | None
    at_round: int | None
    hosts: tuple[str, ...] | None
    up: str | None
    down: str | None


def load_schedule(path: str, inventory: Inventory) -> tuple[BandwidthChange, ...]:
    data = read_yaml(path, "pass --bandwidth-schedule with an existing YAML file")
    return schedule_from_data(data, path, inventory)


def schedule_from_data(data: object, where: str,
                       inventory: Inventory) -> tuple[BandwidthChange, ...]:
    """A schedule from its YAML data (a schedule file, or one inlined in a train config)."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a list of changes such as "
                          "- {at_s: 30, up: 5mbit, down: 10mbit}")
    return tuple(_change(item, f"{where}: [{i}]", inventory) for i, item in enumerate(data))


def schedule_to_data(changes: tuple[BandwidthChange, ...]) -> list[dict]:
    """The schedule as its YAML data, the keys it was given with: what a run records."""
    return [{k: list(v) if isinstance(v, tuple) else v
             for k, v in asdict(c).items() if v is not None} for c in changes]


def _change(item: object, where: str, inventory: Inventory) -> BandwidthChange:
    from edgectl.network.shaping import ShapeSpec

    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping, got {show_value(item)}")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; use {', '.join(KEYS)}")
    at_s, at_round = item.get("at_s"), item.get("at_round")
    if (at_s is None) == (at_round is None):
        raise ConfigError(f"{where}: give exactly one of at_s (seconds) or at_round")
    if at_s is not None and (not isinstance(at_s, int | float) or at_s < 0):
        raise ConfigError(f"{where}.at_s: expected seconds >= 0, got {show_value(at_s)}")
    if at_round is not None and (not isinstance(at_round, int) or isinstance(at_round, bool)
                                 or at_round < 1):
        raise ConfigError(f"{where}.at_round: expected a round number, counting from 1, got "
                          f"{show_value(at_round)}")
    hosts = item.get("hosts")
    devices = [h.name for h in inventory.devices]
    if hosts is not None and (not isinstance(hosts, list) or not set(hosts) <= set(devices)):
        raise ConfigError(f"{where}.hosts: expected device names among {', '.join(devices)}, "
                          f"got {show_value(hosts)}")
    try:
        ShapeSpec(up=item.get("up"), down=item.get("down"))
    except Exception as e:
        raise ConfigError(f"{where}: {e}") from e
    return BandwidthChange(at_s, at_round, tuple(hosts) if hosts else None, item.get("up"),
                           item.get("down"))


class ScheduleRunner:
    """Applies the changes of a schedule during one run; `on_event` sees every run event."""

    def __init__(self, changes: tuple[BandwidthChange, ...], inventory: Inventory,
                 emit: Callable[[dict], None]):
        self.changes, self.inventory, self.emit = changes, inventory, emit
        self.applied = False
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Apply the first round's changes now and start the clock for the timed ones."""
        self._apply([c for c in self.changes if c.at_round == 1])
        timed = sorted((c for c in self.changes if c.at_s is not None), key=lambda c: c.at_s)
        threading.Thread(target=self._timed, args=(timed, time.monotonic()), daemon=True,
                         name="bandwidth-schedule").start()

    def on_event(self, event: dict) -> None:
        if event.get("type") == "round":
            nxt = event["round"] + 1
            self._apply([c for c in self.changes if c.at_round == nxt])

    def stop(self) -> None:
        self._stop.set()

    def _timed(self, changes: list[BandwidthChange], t0: float) -> None:
        for change in changes:
            if self._stop.wait(max(t0 + change.at_s - time.monotonic(), 0)):
                return
            try:
                self._apply([change])
            except EdgectlError as e:  # on this thread nobody would see it: record it
                self.emit({"type": "bandwidth_error", "host": "coordinator",
                           "time": time.time(), "message": str(e), "at_s": change.at_s})

    def _apply(self, changes: list[BandwidthChange]) -> None:
        from edgectl.network.shaping import ShapeSpec, shape_set

        for change in changes:
            with self._lock:
                if self._stop.is_set():
                    return
                self.applied = True
                shape_set(self.inventory, ShapeSpec(up=change.up, down=change.down),
                          change.hosts)
                self.emit({"type": "bandwidth", "host": "coordinator", "time": time.time(),
                           "devices": list(change.hosts or [h.name for h in
                                                            self.inventory.devices]),
                           "up": change.up, "down": change.down, "at_s": change.at_s,
                           "at_round": change.at_round})
