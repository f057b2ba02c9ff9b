"""The fleet inventory: which hosts take part in a run, how to reach them, what each one does.

Owns the Ansible-style YAML inventory format (documented key by key in
inventory.example.yaml), its validation, the `Host` and `Inventory` dataclasses the rest of
edgectl works with, and the built-in local fleet used when no --inventory is given.

Note: variable precedence follows Ansible. `all` is a group of depth 0 and each level of
`children` adds one; a deeper group's vars override a shallower one's, groups of equal depth
apply in order of name, and a host's own vars override every group's (a host listed in
several places merges its own vars in file order). A null value unsets a key, so its default
applies. Each value is validated where it is written, so an error names that YAML path even
for a var a host inherits from a group. Paths to local files (key file, known_hosts) expand
`~` and resolve relative to the inventory file's directory; paths on the hosts do not.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType

import yaml

from edgectl.errors import ConfigError
from edgectl.fleet import inventory_keys as keys
from edgectl.yaml_text import read_yaml, show_value

LOCAL_FLEET_SOURCE = "built-in local fleet"
LOCAL_FLEET_YAML = """\
# The built-in local fleet: a server and devices that are all this machine, no SSH.
all:
  vars:
    ansible_host: 127.0.0.1
    ansible_connection: local
  children:
    servers:
      vars: {edgectl_role: server}
      hosts:
        server:
    devices:
      vars: {edgectl_role: device}
      hosts:
        device1:
        device2:
"""

_GROUP_KEYS = ("hosts", "vars", "children")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]*")


@dataclass(frozen=True)
class Host:
    """One machine of the fleet, with every default applied and every local path resolved."""

    name: str
    address: str
    port: int
    user: str
    key_file: str | None
    connection: str  # "ssh" | "local"
    role: str  # "server" | "device"
    python: str
    workdir: str
    iface: str | None
    data_dir: str | None
    known_hosts: str | None
    pip_args: str | None
    split_point: int | None = None     # a device pinned to this p (the plan chooses N)
    microbatches: int | None = None    # a device pinned to this N (the plan chooses p)
    # Every other var (other ansible_* keys, user vars), unused by edgectl. Kept out of the
    # hash (a mapping is not hashable) and the repr (it may hold ansible_password).
    extra: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False)

    def __post_init__(self) -> None:
        for what, value, check in (("role", self.role, keys.ROLE), ("port", self.port, keys.port),
                                   ("connection", self.connection, keys.CONNECTION)):
            try:
                check(value)
            except keys.BadValue as bad:
                raise ConfigError(f"host {self.name}: {what}: expected {bad}, "
                                  f"got {show_value(value)}") from None
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def is_local(self) -> bool:
        return self.connection == "local"


@dataclass(frozen=True)
class Inventory:
    """The fleet: exactly one server and at least one device, in declaration order."""

    path: str | None  # None for the built-in local fleet
    hosts: tuple[Host, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        names = [h.name for h in self.hosts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise self._error(f"host names repeat: {', '.join(repeated)}")
        servers = [h.name for h in self.hosts if h.role == "server"]
        if not servers:
            raise self._error("no host has edgectl_role: server; exactly one server is needed")
        if len(servers) > 1:
            raise self._error(f"{len(servers)} hosts have edgectl_role: server "
                              f"({', '.join(servers)}); exactly one server is needed")
        if not self.devices:
            raise self._error("no host has edgectl_role: device; at least one device is needed")

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.path or LOCAL_FLEET_SOURCE}: {problem}")

    @property
    def server(self) -> Host:
        return next(h for h in self.hosts if h.role == "server")

    @property
    def devices(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == "device")

    def digest(self) -> str:
        """sha256 of the hosts as canonical JSON: the file's formatting, key order and host
        order do not change it; any value that reaches a Host does."""
        plain = [{f.name: getattr(h, f.name) for f in fields(h)
                  if f.name not in keys.PLACEMENT_FIELDS} | {"extra": dict(h.extra)}
                 for h in sorted(self.hosts, key=lambda h: h.name)]
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def select(self, names: Sequence[str]) -> Inventory:
        """The server plus the named hosts, in inventory order (what --hosts asks for)."""
        names = [names] if isinstance(names, str) else list(names)
        known = [h.name for h in self.hosts]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise self._error(f"--hosts: unknown host {', '.join(map(show_value, unknown))}; "
                              f"known hosts: {', '.join(known)}")
        chosen = tuple(h for h in self.hosts if h.role == "server" or h.name in names)
        if not any(h.role == "device" for h in chosen):
            raise self._error(f"--hosts selects no device; name at least one of: "
                              f"{', '.join(h.name for h in self.devices)}")
        return Inventory(self.path, chosen)


def load_inventory(path: str | os.PathLike | None) -> Inventory:
    """The inventory in the YAML file at `path`, or the built-in local fleet for None."""
    if path is None:
        return local_fleet()
    source = os.fspath(path)
    data = read_yaml(source, "pass --inventory with an existing file, or omit it to use the "
                     "built-in local fleet")
    return parse_inventory(data, source)


def parse_inventory(data: object, source: str) -> Inventory:
    """The inventory in already-loaded YAML `data`. Messages start with `source`, and
    relative key and known_hosts paths resolve against the directory `source` names."""
    return _parse(data, source, path=source)


def local_fleet(devices: int = 2) -> Inventory:
    """LOCAL_FLEET_YAML with `devices` devices (device1, device2, ...)."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"{LOCAL_FLEET_SOURCE}: expected at least 1 device, got {devices!r}")
    data = yaml.safe_load(LOCAL_FLEET_YAML)
    data["all"]["children"]["devices"]["hosts"] = {f"device{i}": None
                                                   for i in range(1, devices + 1)}
    return _parse(data, LOCAL_FLEET_SOURCE, path=None)


def _parse(data: object, source: str, path: str | None) -> Inventory:
    top = _mapping(data, "", source, 'a mapping with the key "all"')
    for key in top:
        if key != "all":
            raise _error(source, _name(key), "unknown top-level key; put groups under all.children")
    if "all" not in top:
        raise _error(source, "", 'expected the top-level key "all"; put groups under all.children')
    found: dict[str, list[tuple]] = {}
    _walk(top["all"], "all", "all", 0, (), source, found)
    hosts = tuple(_build_host(name, places, source) for name, places in found.items())
    return Inventory(path, hosts)


def _walk(node: object, where: str, name: str, depth: int, chain: tuple, source: str,
          found: dict[str, list[tuple]]) -> None:
    """Record each host under the group at `where` with the group var layers above it:
    (depth, group name, vars, id of the group's node), outermost first."""
    if any(layer[3] == id(node) for layer in chain):
        raise _error(source, where, "a group inside itself (a YAML alias loop)")
    group = _mapping(node, where, source, "a group: a mapping with hosts, vars or children")
    for key in group:
        if key not in _GROUP_KEYS:
            raise _error(source, f"{where}.{_name(key)}",
                         f"unknown group key; {_suggest(str(key), _GROUP_KEYS)}")
    group_vars = _read_vars(group.get("vars"), f"{where}.vars", source)
    chain = (*chain, (depth, name, group_vars, id(node)))
    for key, value in group.items():
        if key == "hosts":
            hosts = _mapping(value, f"{where}.hosts", source, "a mapping of host name -> vars")
            for host, host_vars in hosts.items():
                if not isinstance(host, str) or not _HOST_NAME.fullmatch(host):
                    raise _error(source, f"{where}.hosts", "expected host names of A-Z a-z 0-9 "
                                 "_ . : @ - starting with a letter or digit, got "
                                 f"{show_value(host)}")
                at = f"{where}.hosts.{host}"
                found.setdefault(host, []).append((chain, _read_vars(host_vars, at, source), at))
        elif key == "children":
            children = _mapping(value, f"{where}.children", source, "a mapping of name -> group")
            for child, child_node in children.items():
                _walk(child_node, f"{where}.children.{_name(child)}", str(child), depth + 1,
                      chain, source, found)


def _read_vars(node: object, where: str, source: str) -> dict[str, object]:
    """The vars written at `where`: edgectl's keys checked and converted, others as given."""
    values: dict[str, object] = {}
    for raw_key, value in _mapping(node, where, source, "a mapping of name -> value").items():
        at = f"{where}.{_name(raw_key)}"
        key = keys.ALIASES.get(str(raw_key), str(raw_key))
        if key in keys.KEYS:
            values[key] = _check(key, value, at, source)
        elif key.startswith("edgectl_"):
            known = [k for k in keys.KEYS if k.startswith("edgectl_")]
            raise _error(source, at, f"unknown edgectl key; {_suggest(key, known, 0.8)}")
        else:
            values[key] = value
    return values


def _check(key: str, value: object, where: str, source: str) -> object:
    if value is None and key != "edgectl_role":
        return None
    try:
        checked = keys.KEYS[key][1](value)
    except keys.BadValue as bad:
        raise _error(source, where, f"expected {bad}, got {show_value(value)}") from None
    if key in keys.PATH_KEYS:
        base = os.path.dirname(os.path.abspath(source))
        checked = os.path.normpath(os.path.join(base, os.path.expanduser(str(checked))))
    return checked


def _build_host(name: str, places: list[tuple], source: str) -> Host:
    """Merge a host's var layers (see the module's Note) and apply the defaults."""
    layers = {id(layer): layer for chain, _, _ in places for layer in chain}
    merged: dict[str, object] = {}
    for _, _, group_vars, _ in sorted(layers.values(), key=lambda layer: layer[:2]):
        merged.update(group_vars)
    for _, host_vars, _ in places:
        merged.update(host_vars)
    where = places[0][2]
    values = {attr: merged.get(key) for key, (attr, _) in keys.KEYS.items()}
    if values["role"] is None:
        raise _error(source, where, 'edgectl_role is missing; set it to "server" or "device" '
                     "on the host or one of its groups")
    values.update({k: v for k, v in keys.DEFAULTS.items() if values[k] is None})
    values["address"] = values["address"] or name
    values["user"] = values["user"] or _current_user(values["connection"], where, source)
    extra = MappingProxyType({k: v for k, v in merged.items() if k not in keys.KEYS})
    return Host(name=name, extra=extra, **values)


def _current_user(connection: object, where: str, source: str) -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        if connection == "local":
            return ""
        raise _error(source, where, "ansible_user is not set and the current user has no "
                     "name; set ansible_user") from None


def _mapping(value: object, where: str, source: str, expected: str) -> Mapping:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise _error(source, where, f"expected {expected}, got {show_value(value)}")


def _error(source: str, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


def _suggest(word: str, options: Sequence[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    return f"did you mean {close[0]}?" if close else f"expected one of {', '.join(options)}"


def _name(key: object) -> str:
    """A mapping key as a YAML path element, kept on one line."""
    text = str(key)
    return text if text.isprintable() else json.dumps(text)
