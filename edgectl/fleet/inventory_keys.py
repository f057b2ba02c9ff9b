"""The keys of a fleet inventory: which host variables edgectl reads, and what each accepts.

Each check takes a YAML value and returns the value to keep, or raises `BadValue` whose
message says what the key expects; edgectl/fleet/inventory.py names the YAML path.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable

IFACE_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
PATH_KEYS = ("ansible_ssh_private_key_file", "edgectl_known_hosts")
ALIASES = {  # older Ansible spellings, read as the current key
    "ansible_ssh_host": "ansible_host",
    "ansible_ssh_port": "ansible_port",
    "ansible_ssh_user": "ansible_user",
    "ansible_private_key_file": "ansible_ssh_private_key_file",
}
DEFAULTS = {"port": 22, "connection": "ssh", "python": "python3", "workdir": "~/.edgectl"}


class BadValue(ValueError):
    """A value a key does not allow; the message says what the key expects."""


def text(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise BadValue("a non-empty string")


def port(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise BadValue("an integer 1..65535")


def port_text(value: object) -> int:
    """A port as YAML gives it; a quoted number ("2222") is accepted as Ansible does."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value):
        return port(int(value))
    return port(value)


def choice(*allowed: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        raise BadValue(" or ".join(json.dumps(a) for a in allowed))
    return check


def iface(value: object) -> str:
    if isinstance(value, str) and IFACE_PATTERN.fullmatch(value):
        return value
    raise BadValue("an interface name like eth0 (1-15 of A-Z a-z 0-9 _ . @ -)")


def pip_args(value: object) -> str:
    if isinstance(value, str):
        try:
            shlex.split(value)
            return value
        except ValueError:
            pass
    raise BadValue("a string of pip options with balanced quotes")


def at_least(least: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= least:
            return value
        raise BadValue(f"an integer >= {least}")
    return check


ROLE = choice("server", "device")
CONNECTION = choice("ssh", "local")


# Inventory key -> (Host field, check that returns the value to keep).
KEYS: dict[str, tuple[str, Callable[[object], object]]] = {
    "ansible_host": ("address", text),
    "ansible_port": ("port", port_text),
    "ansible_user": ("user", text),
    "ansible_ssh_private_key_file": ("key_file", text),
    "ansible_connection": ("connection", CONNECTION),
    "edgectl_role": ("role", ROLE),
    "edgectl_python": ("python", text),
    "edgectl_workdir": ("workdir", text),
    "edgectl_iface": ("iface", iface),
    "edgectl_data_dir": ("data_dir", text),
    "edgectl_known_hosts": ("known_hosts", text),
    "edgectl_pip_args": ("pip_args", pip_args),
    "edgectl_split_point": ("split_point", at_least(0)),
    "edgectl_microbatches": ("microbatches", at_least(1)),
}
# Keys that pin a device's placement: what a plan may choose, not what the fleet is, so they
# stay out of the inventory's digest (the profile store's key).
PLACEMENT_FIELDS = ("split_point", "microbatches")
