"""Shaping state files: what edgectl applied to each interface, kept on the coordinator.

One JSON file per shaped interface (see edgectl/network/shaping.py's Note on restoring),
written before the first change so `edgectl shape clear` can undo a crashed `set`, and
read by whoever must know how a link is shaped now (`applied_label`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgectl.errors import FleetError
from edgectl.fleet.inventory import Host
from edgectl.network.tc import rate_bits

STATE_ENV = "EDGECTL_SHAPING"
DEFAULT_STATE_ROOT = "~/.edgectl/shaping"


def state_root() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_ROOT).expanduser()


def state_path(host: Host) -> Path:
    return _path(host.address, host.port, host.iface)


def _path(address: str, port: int, iface: str | None) -> Path:
    key = re.sub(r"[^A-Za-z0-9_.:@-]", "_", f"{address}_{port}_{iface}")
    return state_root() / f"{key}.json"


def forget_state(address: str, port: int, iface: str) -> bool:
    """Delete the state of an interface that is gone (a testbed host's, taken down with its
    namespace), so a testbed brought up again at that address is not taken as shaped;
    whether there was one."""
    try:
        _path(address, port, iface).unlink()
        return True
    except FileNotFoundError:
        return False


def applied_label(host: Host) -> str:
    """A short name for the shaping edgectl has applied to this host ("" for none), so
    measurements of a shaped link are never mistaken for the unshaped one's."""
    if host.is_local or not host.iface:
        return ""
    state = load_state(host)
    if not state or state.get("phase") != "applied":
        return ""
    spec = state.get("spec", {})
    parts = [f"{k}{spec[k]}" for k in ("up", "down", "delay", "jitter", "loss") if spec.get(k)]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts))


TESTBED_LINK_VAR = "testbed_link"   # a testbed's inventory: the rate of every device link


def shaped_rates(host: Host, change: tuple[str | None, str | None] | None = None
                 ) -> tuple[float | None, float | None]:
    """The rates, up and down in bit/s, that edgectl itself shaped this device's link to
    (None where it shaped nothing that way): its `edgectl shape` state (--shape and a
    bandwidth schedule shape through it), or `change`, the tc rates a change is about to
    shape it to instead; and the link of the testbed it is on (both ways). Where both
    apply, the lower: the two token buckets are in series."""
    link = rate_bits(str(host.extra.get(TESTBED_LINK_VAR, "")))
    if change is None:
        state = None if host.is_local or not host.iface else load_state(host)
        spec = state.get("spec", {}) if state and state.get("phase") == "applied" else {}
        change = (spec.get("up"), spec.get("down"))
    up, down = (min((r for r in (rate_bits(c) if c else None, link) if r), default=None)
                for c in change)
    return up, down


def load_state(host: Host) -> dict | None:
    try:
        return json.loads(state_path(host).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FleetError(f"{host.name}: shaping state {state_path(host)} is unreadable ({e}); "
                         "check the interface with `tc qdisc show` and delete the file") from None


def save_state(host: Host, record: dict) -> None:
    path = state_path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
