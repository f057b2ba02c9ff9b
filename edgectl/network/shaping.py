"""`edgectl shape`: rate limits (and netem delay/loss) on each device's link, set and undone.

Each device is shaped on its own host, both directions on its `edgectl_iface`: the uplink
(device -> server) on the iface's egress, the downlink (server -> device) on an ifb device
fed by the iface's ingress (trees in edgectl/network/tc.py). Shaping at the device rather
than per destination on the server keeps each device's rules to itself: a subset of
devices is set and cleared without touching a shared server tree, a server that is the
coordinator itself (a local host) or reaches devices by name needs nothing, and the two
directions are the same htb tree, equally exact. The SSH control channel is never shaped.

Note: restoring. Before changing an interface edgectl reads its qdiscs; it shapes only an
interface whose root the kernel attached (handle 0:, e.g. noqueue, pfifo_fast, fq_codel,
mq) or that has none, and without an ingress qdisc, because deleting edgectl's root and
ingress then brings exactly that back. Anything else is refused: edgectl will not replace
what it cannot restore. What it applies is recorded in a state file on the coordinator,
EDGECTL_SHAPING or ~/.edgectl/shaping, one per interface (address, port, iface: not per
inventory digest, which a --hosts subset or an edited inventory changes), written BEFORE
the first change, so `clear` undoes a crashed `set`. `clear` removes only what a state
file records and is idempotent; `set` is all-or-nothing: a failure, a failed probe or
Ctrl-C undoes every device it touched before the error propagates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

from edgectl.errors import FleetError, UsageError
from edgectl.fleet.hosts import HostResult, HostSession, on_hosts
from edgectl.fleet.inventory import Host, Inventory
from edgectl.network import tc
from edgectl.network.shaping_state import load_state, save_state, state_path
from edgectl.network.tc import netem_available

# Measures the links of an inventory's devices: per device (uplink, downlink) bits/s. The
# planning layer's `measure_links` is the one edgectl passes in; shaping never imports it.
LinkProbe = Callable[[Inventory], dict[str, tuple[float, float]]]
_CHECKS = {"up": tc.rate_problem, "down": tc.rate_problem, "delay": tc.time_problem,
           "jitter": tc.time_problem, "loss": tc.loss_problem}


@dataclass(frozen=True)
class ShapeSpec:
    """What each device's link gets; errors name the command-line option."""

    up: str | None = None  # tc rate of each device's uplink (device -> server)
    down: str | None = None  # each device's downlink (server -> device)
    delay: str | None = None  # netem, on the uplink: the RTT grows by it
    jitter: str | None = None  # netem, needs delay
    loss: str | None = None  # netem, on the uplink

    def __post_init__(self) -> None:
        for name in _CHECKS:
            problem = _problem(name, getattr(self, name))
            if problem:
                raise UsageError(f"--{name}: {problem}")
        if self.jitter and not self.delay:
            raise UsageError("--jitter: needs --delay (jitter varies the delay)")
        if not any(getattr(self, f.name) for f in fields(self)):
            raise UsageError("nothing to shape: give --up, --down, --delay or --loss")

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay or self.loss)

    @classmethod
    def parse(cls, text: str) -> ShapeSpec:
        """The spec in "up=10mbit,down=25mbit[,delay=20ms,jitter=5ms,loss=0.5%]" (--shape)."""
        values: dict[str, str] = {}
        for item in (p.strip() for p in str(text).split(",")):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or key not in _CHECKS:
                raise UsageError(f"--shape: expected KEY=VALUE,... with keys "
                                 f"{', '.join(_CHECKS)} (like up=10mbit,down=25mbit), "
                                 f"got {item!r}")
            if key in values:
                raise UsageError(f"--shape: {key} is given twice")
            problem = _problem(key, value)
            if problem:
                raise UsageError(f"--shape: {key}={value}: {problem}")
            values[key] = value
        try:
            return cls(**values)
        except UsageError as e:  # "--jitter: needs --delay" -> "--shape: jitter: needs delay"
            raise UsageError(f"--shape: {str(e).replace('--', '')}") from None

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in asdict(self).items() if v)


def _problem(name: str, value: object) -> str | None:
    if value is None:
        return None
    problem = _CHECKS[name](value)
    return f"expected {problem}, got {value!r}" if problem else None


@dataclass(frozen=True)
class Shaped:
    """What was applied to one device's link, and what a probe measured (None: not probed)."""

    device: str
    up: str | None
    down: str | None
    measured_up_bps: float | None
    measured_down_bps: float | None


@dataclass(frozen=True)
class HostShaping:
    """`shape show` for one host: edgectl's record there (None: nothing applied) and the
    qdiscs its interface (and edgectl's ifb) has now."""

    host: str
    iface: str | None
    applied: dict | None  # the state record: spec, phase ("applying" | "applied"), before
    qdiscs: tuple[str, ...]  # `tc qdisc show` lines
    note: str = ""


# --- which hosts ------------------------------------------------------------------------------

def _devices(inventory: Inventory, hosts: Sequence[str] | None) -> list[Host]:
    """The devices to shape, each checked to be shapeable, before anything changes."""
    if hosts is None:
        return list(inventory.devices)
    names = [hosts] if isinstance(hosts, str) else list(hosts)
    by_name = {h.name: h for h in inventory.hosts}
    for name in names:
        if name not in by_name:
            raise UsageError(f"--hosts: unknown host {name!r}; devices: "
                             f"{', '.join(h.name for h in inventory.devices)}")
        if by_name[name].role == "server":
            raise UsageError(f"--hosts: {name} is the server; shaping applies to devices "
                             "(each device's uplink and downlink are shaped on the device)")
    return [h for h in inventory.devices if h.name in names]


def _require_shapeable(host: Host) -> None:
    if host.is_local:
        raise UsageError(f"{host.name}: a local host (ansible_connection: local) cannot be "
                         "shaped; shaping needs hosts with their own interface (a testbed or "
                         "an SSH fleet) with edgectl_iface set")
    if not host.iface:
        raise UsageError(f"{host.name}: edgectl_iface is not set; set it in the inventory to "
                         "the interface that reaches the server (e.g. eth0) to shape its link")


# --- set --------------------------------------------------------------------------------------

def shape_set(inventory: Inventory, spec: ShapeSpec, hosts: Sequence[str] | None = None, *,
              probe: LinkProbe | None = None) -> list[Shaped]:
    """Shape every chosen device's link (all devices for None), then measure the shaped
    links with `probe` (not at all for None); requested and measured rates."""
    devices = _devices(inventory, hosts)
    for host in devices:
        _require_shapeable(host)
    _parallel(devices, lambda host: _check_host(host, spec))
    try:
        _parallel(devices, lambda host: _apply_host(host, spec))
        measured = probe(inventory.select([h.name for h in devices])) if probe else {}
    except BaseException:
        _parallel(devices, _clear_host, quiet=True)
        raise
    return [Shaped(h.name, spec.up, spec.down, *measured.get(h.name, (None, None)))
            for h in devices]


def _check_host(host: Host, spec: ShapeSpec) -> None:
    """Refuse, changing nothing, what cannot be shaped and restored (see the module's Note)."""
    with HostSession(host) as session:
        run = tc.TcRunner(session)
        if spec.needs_netem and not netem_available(session):
            raise UsageError(f"{host.name}: --delay/--jitter/--loss need the netem qdisc, which "
                             "this kernel lacks (kernel module sch_netem); rate shaping "
                             "(--up/--down) still works")
        if not run.link_exists(host.iface):
            raise FleetError(f"{host.name}: edgectl_iface {host.iface} is not an interface "
                             "there; set edgectl_iface to the one that reaches the server")
        if load_state(host) is not None:
            return  # edgectl's own shaping, replaced by _apply_host
        qdiscs = run.qdiscs(host.iface)
        root = tc.root_of(qdiscs)
        if not tc.is_kernel_default(root):
            raise FleetError(f"{host.name}: {host.iface} already has a root qdisc "
                             f"{tc.describe(root)} that edgectl did not create; edgectl will "
                             "not replace what it cannot restore (remove it, or shape another "
                             "host)")
        if spec.down and tc.ingress_of(qdiscs):
            raise FleetError(f"{host.name}: {host.iface} already has an ingress qdisc "
                             f"{tc.describe(tc.ingress_of(qdiscs))} that edgectl did not "
                             "create; edgectl will not replace what it cannot restore "
                             "(remove it, or shape only --up)")
        if spec.down and run.link_exists(tc.ifb_name(host.iface)):
            raise FleetError(f"{host.name}: an interface {tc.ifb_name(host.iface)} exists but "
                             "edgectl has no record of it; delete it (ip link del) to shape "
                             "the downlink")


def _apply_host(host: Host, spec: ShapeSpec) -> None:
    if load_state(host) is not None:
        _clear_host(host)  # replace edgectl's earlier shaping
    with HostSession(host) as session:
        run = tc.TcRunner(session)
        ifb = tc.ifb_name(host.iface) if spec.down else None
        record = {"host": host.name, "address": host.address, "port": host.port,
                  "iface": host.iface, "ifb": ifb, "spec": asdict(spec), "phase": "applying",
                  "before": run.qdisc_text(host.iface), "time": time.time()}
        save_state(host, record)  # before the first change: a crash leaves it for `clear`
        lines: list[list[str]] = []
        if spec.up or spec.needs_netem:
            netem = tc.netem_args(spec.delay, spec.jitter, spec.loss) if spec.needs_netem else None
            lines += _tc(tc.htb_tree(host.iface, spec.up or tc.UNLIMITED, netem))
        if ifb:
            lines += [["ip", *argv] for argv in tc.ifb_create(ifb)]
            lines += _tc(tc.htb_tree(ifb, spec.down))
            lines += _tc(tc.ingress_redirect(host.iface, ifb))
        run.script(lines, f"shaping {host.iface}")
        save_state(host, record | {"phase": "applied"})


def _tc(argvs: list[list[str]]) -> list[list[str]]:
    return [["tc", *argv] for argv in argvs]


# --- clear ------------------------------------------------------------------------------------

def shape_clear(inventory: Inventory, hosts: Sequence[str] | None = None) -> list[HostResult]:
    """Undo edgectl's shaping on the chosen devices (all for None); per device, what was
    removed. A device edgectl has no record of is left alone ("nothing to clear")."""
    return on_hosts(_devices(inventory, hosts), _clear_host)


def _clear_host(host: Host) -> str:
    record = load_state(host) if host.iface and not host.is_local else None
    if record is None:
        return "nothing to clear"
    iface, ifb = record["iface"], record.get("ifb")
    with HostSession(host) as session:
        run = tc.TcRunner(session)
        qdiscs = run.qdiscs(iface)
        lines, removed = [], []
        if ifb and tc.ingress_of(qdiscs):
            lines.append(["tc", "qdisc", "del", "dev", iface, "ingress"])
            removed.append(f"ingress of {iface}")
        if tc.is_edgectl_root(qdiscs):
            lines.append(["tc", "qdisc", "del", "dev", iface, "root"])
            removed.append(f"htb {tc.ROOT} of {iface}")
        if ifb and run.link_exists(ifb):
            lines.append(["ip", "link", "del", ifb])
            removed.append(ifb)
        run.script(lines, f"clearing the shaping of {iface}")
        now = run.qdisc_text(iface)
    state_path(host).unlink(missing_ok=True)
    if now != record["before"]:
        raise FleetError(f"{host.name}: removed {', '.join(removed) or 'nothing'} but {iface} "
                         f"is not as before: was {_one_line(record['before'])!r}, now "
                         f"{_one_line(now)!r}")
    return f"removed {', '.join(removed)}" if removed else "nothing left to remove"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()) or "none"


# --- show -------------------------------------------------------------------------------------

def shape_show(inventory: Inventory) -> list[HostResult]:
    """Per host: edgectl's record of what it applied there and the qdisc lines it has now."""
    return on_hosts(list(inventory.hosts), _show_host)


def _show_host(host: Host) -> HostShaping:
    if host.is_local or not host.iface:
        why = "local host" if host.is_local else "no edgectl_iface"
        return HostShaping(host.name, host.iface, None, (), f"not shapeable ({why})")
    record = load_state(host)
    with HostSession(host) as session:
        run = tc.TcRunner(session)
        devs = [host.iface] + ([record["ifb"]] if record and record.get("ifb") else [])
        lines = tuple(f"{dev}: {line.strip()}" for dev in devs if run.link_exists(dev)
                      for line in run.qdisc_text(dev).splitlines() if line.strip())
    return HostShaping(host.name, host.iface, record, lines)


# --- around a run -----------------------------------------------------------------------------

@contextlib.contextmanager
def shaped(inventory: Inventory, spec: ShapeSpec | None, hosts: Sequence[str] | None = None,
           *, probe: LinkProbe | None = None) -> Iterator[list[Shaped]]:
    """Shape for the duration of a `with` block (nothing for spec None); always cleared,
    also on an error or Ctrl-C. A clear that fails after the block succeeded raises."""
    if spec is None:
        yield []
        return
    for host in _devices(inventory, hosts):
        if host.iface and not host.is_local and load_state(host) is not None:
            raise UsageError(f"{host.name} is already shaped by `edgectl shape set`; run "
                             "`edgectl shape clear` first, or leave out --shape")
    try:
        yield shape_set(inventory, spec, hosts, probe=probe)
    except BaseException:
        _parallel(_devices(inventory, hosts), _clear_host, quiet=True)
        raise
    failed = [r for r in shape_clear(inventory, hosts) if not r.ok]
    if failed:
        raise FleetError(f"clearing the shaping failed: {failed[0].error}; see "
                         "`edgectl shape show` and run `edgectl shape clear`")


def _parallel(hosts: list[Host], operation, *, quiet: bool = False) -> list:
    """`operation` on every host at once; the first host's exception (in inventory order)
    re-raised once all have finished, or swallowed with `quiet` (undoing after a failure)."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        futures = [pool.submit(operation, host) for host in hosts]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors and not quiet:
        raise errors[0]
    return [f.result() for f in futures if f.exception() is None]
