"""A fleet for one command: an emulated testbed brought up and provisioned for the block,
and always taken down when it ends (an error, Ctrl-C), as `edgectl bench` does for its
sweeps and `edgectl train --testbed` for one run.

`--testbed` takes the testbed as comma-separated key=value pairs, the options of
`edgectl testbed up`: `devices=2,cpu=0.1,server-cpu=1,link=20mbit` (and
`state-dir=PATH`); per-device quotas are slash-separated (`cpu=0.1/0.2`). The testbed is
named `tr` and the process id, so two commands never collide.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgectl.errors import FleetError, UsageError
from edgectl.fleet.inventory import Inventory
from edgectl.network.testbed_spec import DEFAULT_STATE_DIR, TestbedSpec

TESTBED_KEYS = ("devices", "cpu", "server-cpu", "link", "state-dir")


def parse_testbed_option(text: str, name: str | None = None) -> TestbedSpec:
    """The TestbedSpec of a `--testbed` value; a one-line UsageError naming what is wrong."""
    values: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise UsageError(f"--testbed: expected key=value pairs such as "
                             f"devices=2,cpu=0.1,server-cpu=1; got {part!r}")
        if key.strip() not in TESTBED_KEYS:
            raise UsageError(f"--testbed: unknown key {key.strip()!r}; the keys are "
                             f"{', '.join(TESTBED_KEYS)}")
        values[key.strip()] = value.strip()
    try:
        devices = int(values.get("devices", "2"))
        cpu = tuple(float(v) for v in values["cpu"].split("/")) if "cpu" in values else ()
        server_cpu = float(values["server-cpu"]) if "server-cpu" in values else None
    except ValueError:
        raise UsageError(f"--testbed: devices is a whole number, cpu and server-cpu numbers "
                         f"of cores (cpu=0.1, or cpu=0.1/0.2 one per device); got {text!r}"
                         ) from None
    return TestbedSpec(name or f"tr{os.getpid() % 1_000_000}", devices, cpu, server_cpu,
                       values.get("link"), values.get("state-dir", DEFAULT_STATE_DIR))


@contextmanager
def provisioned_testbed(spec: TestbedSpec, phase: Callable[[str], None] = lambda text: None,
                        *, dp: bool = False) -> Iterator[Inventory]:
    """The inventory of testbed `spec`, brought up and provisioned (opacus too with `dp`),
    and taken down when the block ends, however it ends. `phase` hears each step."""
    from edgectl.fleet.inventory import load_inventory
    from edgectl.fleet.provision import provision
    from edgectl.network import testbed

    phase(f"bringing up testbed {spec.name}")
    made = testbed.testbed_up(spec)
    try:
        inventory = load_inventory(made.inventory_path)
        phase(f"provisioning testbed {spec.name}")
        failed = [r for r in provision(list(inventory.hosts), dp=dp) if not r.ok]
        if failed:
            raise FleetError(f"provisioning testbed {spec.name} failed: "
                             + "; ".join(r.error for r in failed))
        yield inventory
    finally:
        phase(f"taking down testbed {spec.name}")
        testbed.testbed_down(spec.name, spec.state_dir)
