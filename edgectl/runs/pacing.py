"""Pacing each device's connection to the server to the rate of its shaped link.

Why: a link shaped by a token bucket with a short queue (a testbed's, `edgectl shape`'s)
drops what a sender puts in faster than it drains, and this kernel's congestion control
(bbr) probes above the rate: on a 20 Mbit/s testbed a sweep lost 1240-1455 packets at the
devices' downlink queues and some gradients took 3x their time; with the agents' sockets
paced to 1.05x the link none did, and a sequential split ran 17% faster (README, "Pacing
the links"). So every run paces each direction of a device's connection to its link's rate
(agents.wire.Connection.pace), under these rules:

- only links edgectl itself shaped are paced, to the rate it shaped them to
  (edgectl.network.shaping_state.shaped_rates): that rate is the link's, exactly; a
  measured profile of an unshaped link is an estimate, not a cap to hold a sender to;
- at PACING_FACTOR times that rate: tc counts packet headers, and a cap a little above the
  link's rate never leaves it idle, while what it sends too fast queues slowly enough;
- every strategy with a server part alike (fl, split, pipar, ecofed), so comparisons stay
  fair; plexus and dpsgd send their models device to device and are not paced;
- a bandwidth schedule's change at a round start re-paces from that round (the
  coordinator's placements message carries the new rates, agents.control), also where
  the links start unshaped; a change at a time (at_s) lands mid-round, which pacing
  cannot follow, so such runs are not paced;
- `--no-link-pacing` (bench: `link_pacing: false`) turns it off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from agents.config import DeviceSpec
from edgectl.fleet.inventory import Inventory
from edgectl.network.schedule import BandwidthChange
from edgectl.network.shaping_state import shaped_rates
from edgectl.runs.options import TrainOptions

PACING_FACTOR = 1.05

Rates = tuple[float | None, float | None]   # (up, down) bit/s, None: not paced


@dataclass(frozen=True)
class LinkPacing:
    """What a run paces from its first round: device -> (up, down) bit/s, or why nothing is
    paced (`off`); `follows_schedule`: a schedule's changes at later round starts re-pace
    the links (`repace`)."""

    rates: dict[str, Rates] = field(default_factory=dict)
    off: str | None = None
    follows_schedule: bool = False

    def repace(self, inventory: Inventory) -> Callable[[], dict[str, Rates]] | None:
        """What the coordinator calls after a round-start change to get every device's
        pacing from then on (None where nothing re-paces)."""
        return functools.partial(paced_rates, inventory) if self.follows_schedule else None

    def of(self, device: str) -> Rates:
        return self.rates.get(device, (None, None))

    def applied_to(self, devices: Sequence[DeviceSpec]) -> tuple[DeviceSpec, ...]:
        """The devices of a run config with this pacing's rates."""
        return tuple(replace(d, pace_up_bps=self.of(d.name)[0], pace_down_bps=self.of(d.name)[1])
                     for d in devices)

    def to_json(self) -> dict:
        return {"factor": PACING_FACTOR, "off": self.off,
                "devices": {d: list(r) for d, r in self.rates.items()},
                "follows_schedule": self.follows_schedule}


def paced_rates(inventory: Inventory,
                changes: Sequence[BandwidthChange] = ()) -> dict[str, Rates]:
    """Each device's pacing now, from its shaped link, or from the last of `changes` (a
    schedule's, about to be applied) that names it; (None, None) for an unshaped link."""
    out = {}
    for host in inventory.devices:
        change = None
        for c in changes:
            if c.hosts is None or host.name in c.hosts:
                change = (c.up, c.down)
        out[host.name] = tuple(r * PACING_FACTOR if r else None
                               for r in shaped_rates(host, change))
    return out


def link_pacing(options: TrainOptions, inventory: Inventory,
                schedule: Sequence[BandwidthChange] = ()) -> LinkPacing:
    """The pacing of a run that starts now (see the module docstring for the rules)."""
    if not options.link_pacing:
        return LinkPacing(off="--no-link-pacing")
    if options.decentralized:
        return LinkPacing(off=f"{options.strategy} sends its models device to device")
    if any(c.at_s is not None for c in schedule):
        return LinkPacing(off="the bandwidth schedule changes rates at times (at_s), "
                              "mid-round, which pacing cannot follow")
    rates = paced_rates(inventory, [c for c in schedule if c.at_round == 1])
    follows = any(c.at_round > 1 for c in schedule)
    if not follows and not any(up or down for up, down in rates.values()):
        return LinkPacing(off="no link of this fleet is shaped by edgectl")
    return LinkPacing(rates, follows_schedule=follows)


def pacing_line(pacing: dict) -> str:
    """The run header's line on pacing (a placements record's "link_pacing")."""
    if pacing.get("off"):
        return f"links not paced: {pacing['off']}"

    def mbit(rate: float | None) -> str:
        return "-" if rate is None else f"{rate / 1e6:.3g}"

    rates = ", ".join(f"{d} {mbit(up)}/{mbit(down)}"
                      for d, (up, down) in pacing["devices"].items())
    later = ("; re-paced at each of the bandwidth schedule's round-start changes"
             if pacing.get("follows_schedule") else "")
    return (f"links paced, each at {pacing['factor']:g}x the rate edgectl shaped it to "
            f"(Mbit/s up/down): {rates}{later}")
