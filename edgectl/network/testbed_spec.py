"""What a testbed is: the spec `edgectl testbed up` validates, and the state file it keeps.

`Testbed` is the record of what `up` made (edgectl/network/testbed.py's Note on crash
safety says why it is written before each object is made); `save_testbed`, `load_testbed`
and `testbed_names` keep it in STATE_DIR/NAME/state.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass

from edgectl.errors import ConfigError, UsageError
from edgectl.network.tc import rate_bits

DEFAULT_STATE_DIR = "/var/lib/edgectl/testbeds"
STATE_FILE = "state.json"
NAME_PATTERN = re.compile(r"[a-z0-9]{1,8}")
MAX_DEVICES = 16


def device_name(index: int) -> str:
    """The inventory name of a testbed's device `index` (1-based)."""
    return f"d{index}"


@dataclass(frozen=True)
class TestbedSpec:
    """What `edgectl testbed up` is asked to build; errors name the command-line option."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    devices: int = 2
    device_cpu: tuple[float, ...] = ()  # cores per device; one value applies to all
    server_cpu: float | None = None
    link: str | None = None  # tc rate of each device's link, both directions
    state_dir: str = DEFAULT_STATE_DIR

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise UsageError(f"NAME: expected 1-8 of a-z 0-9, got {self.name!r}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) \
                or not 1 <= self.devices <= MAX_DEVICES:
            raise UsageError(f"--devices: expected an integer 1..{MAX_DEVICES}, "
                             f"got {self.devices!r}")
        cpus = tuple(_cores("--cpu", v) for v in self.device_cpu)
        if len(cpus) not in (0, 1, self.devices):
            raise UsageError(f"--cpu: give one value or {self.devices} (one per device), "
                             f"got {len(cpus)}")
        object.__setattr__(self, "device_cpu", cpus)
        if self.server_cpu is not None:
            object.__setattr__(self, "server_cpu", _cores("--server-cpu", self.server_cpu))
        if self.link is not None and not (isinstance(self.link, str) and rate_bits(self.link)):
            raise UsageError(f"--link: expected a rate like 20mbit, 500kbit or 1gbit, "
                             f"got {self.link!r}")
        if not isinstance(self.state_dir, str) or not self.state_dir.strip():
            raise UsageError(f"--state-dir: expected a directory path, got {self.state_dir!r}")
        object.__setattr__(self, "state_dir", os.path.abspath(self.state_dir))

    def cpu_of(self, device: int) -> float | None:
        """The quota of device `device` (1-based), None when unthrottled."""
        if not self.device_cpu:
            return None
        return self.device_cpu[0 if len(self.device_cpu) == 1 else device - 1]


def _cores(option: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and value >= 0.01:
        return float(value)
    raise UsageError(f"{option}: expected a number of cores >= 0.01 like 0.25, got {value!r}")


@dataclass(frozen=True)
class TestbedHost:
    __test__ = False

    name: str  # "server", "d1" .. "dN": the inventory's host name
    role: str  # "server" | "device"
    namespace: str
    address: str
    veth_host: str  # on the bridge, in the root namespace
    veth_ns: str  # inside the namespace
    workdir: str
    cpu: float | None  # cores; None = unthrottled
    cgroup: str | None = None
    sshd_pid: int | None = None


@dataclass(frozen=True)
class HostCheck:
    host: str
    netns: bool  # the namespace exists
    sshd: bool  # the recorded sshd pid is a live sshd


@dataclass(frozen=True)
class Testbed:
    """What `up` made (and is making: `complete` is False until it is done)."""

    __test__ = False

    name: str
    subnet: str
    bridge: str
    link: str | None
    hosts: tuple[TestbedHost, ...]
    directory: str  # STATE_DIR/NAME
    inventory_path: str
    known_hosts_path: str
    key_path: str  # the client's private key; .pub beside it
    state_path: str
    complete: bool = False
    objects: tuple[tuple[str, str], ...] = ()  # (kind, what) in creation order
    checks: tuple[HostCheck, ...] = ()  # filled by testbed_status, never stored

    @property
    def healthy(self) -> bool:
        return self.complete and all(c.netns and c.sshd for c in self.checks)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        del data["checks"]
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Testbed:
        data = json.loads(text)
        data["hosts"] = tuple(TestbedHost(**h) for h in data["hosts"])
        data["objects"] = tuple(tuple(o) for o in data["objects"])
        return cls(**data)


def save_testbed(tb: Testbed) -> None:
    temporary = tb.state_path + ".tmp"
    with open(temporary, "w") as f:
        f.write(tb.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, tb.state_path)


def testbed_names(state_dir: str) -> list[str]:
    if not os.path.isdir(state_dir):
        return []
    return sorted(n for n in os.listdir(state_dir)
                  if os.path.isfile(os.path.join(state_dir, n, STATE_FILE)))


def load_testbed(name: str, state_dir: str) -> Testbed:
    path = os.path.join(state_dir, name, STATE_FILE)
    try:
        with open(path) as f:
            return Testbed.from_json(f.read())
    except FileNotFoundError:
        known = ", ".join(testbed_names(state_dir)) or "none"
        raise UsageError(f"no testbed {name!r} in {state_dir}; existing testbeds: {known} "
                         "(see `edgectl testbed status`)") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a testbed state file ({exc}); check `ip netns list` "
                          f"and `ip link` for ec-{name}-* objects and remove the folder") from None
