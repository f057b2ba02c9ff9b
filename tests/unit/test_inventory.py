"""Inventory parsing: the example file, var precedence, every error message, digest, select."""

from __future__ import annotations

import getpass
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from edgectl.errors import ConfigError
from edgectl.fleet.inventory import (
    LOCAL_FLEET_YAML,
    Host,
    Inventory,
    load_inventory,
    local_fleet,
    parse_inventory,
)

REPO = Path(__file__).resolve().parents[2]

FLEET = """
all:
  vars:
    ansible_user: pi
  children:
    servers:
      vars: {edgectl_role: server}
      hosts:
        srv: {ansible_host: 10.0.0.1}
    devices:
      vars: {edgectl_role: device}
      hosts:
        pi1: {ansible_host: 10.0.0.41}
        pi2: {ansible_host: 10.0.0.42}
"""


def parse(text: str) -> Inventory:
    return parse_inventory(yaml.safe_load(textwrap.dedent(text)), "inventory.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("inventory.yaml: ")
    return message


def host(inventory: Inventory, name: str) -> Host:
    return next(h for h in inventory.hosts if h.name == name)


def test_example_file_parses_as_written():
    inventory = load_inventory(REPO / "inventory.example.yaml")
    key = os.path.expanduser("~/.ssh/edgectl_ed25519")
    assert inventory.server.name == "server"
    assert [d.name for d in inventory.devices] == ["pi1", "pi2", "pi3"]
    server = inventory.server
    assert (server.address, server.port, server.user, server.key_file) == (
        "192.168.1.10", 22, "lab", key)
    assert (server.iface, server.data_dir) == ("eno1", "/srv/datasets")
    assert server.pip_args == "--extra-index-url https://download.pytorch.org/whl/cpu"
    for number, device in enumerate(inventory.devices, start=1):
        assert device.address == f"192.168.1.4{number}"
        assert (device.port, device.user, device.key_file) == (22, "pi", key)
        assert (device.connection, device.role, device.is_local) == ("ssh", "device", False)
        assert (device.python, device.workdir) == ("python3", "~/.edgectl")
        assert (device.iface, device.data_dir) == ("eth0", "/home/pi/datasets")
        assert device.known_hosts == str(REPO / "lab_known_hosts")
    assert dict(host(inventory, "pi3").extra) == {"lab_shelf": "B2"}


def test_defaults(monkeypatch):
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    inventory = parse("""
        all:
          hosts:
            s: {edgectl_role: server}
            d: {edgectl_role: device}
    """)
    d = host(inventory, "d")
    assert (d.address, d.port, d.user, d.key_file, d.connection) == ("d", 22, "alice", None, "ssh")
    assert (d.python, d.workdir, d.iface, d.data_dir) == ("python3", "~/.edgectl", None, None)
    assert (d.known_hosts, d.pip_args, dict(d.extra)) == (None, None, {})


def test_group_vars_inherit_and_override_in_order():
    inventory = parse("""
        all:
          vars: {edgectl_role: device, ansible_port: 1, edgectl_python: all, edgectl_workdir: all}
          hosts:
            s: {edgectl_role: server}
          children:
            lab:
              vars: {ansible_port: 2, edgectl_python: lab}
              children:
                pis:
                  vars: {ansible_port: 3}
                  hosts:
                    pi1: {ansible_port: 4}
                    pi2:
    """)
    pi1, pi2 = host(inventory, "pi1"), host(inventory, "pi2")
    assert (pi1.port, pi2.port) == (4, 3)
    assert (pi2.python, pi2.workdir, pi2.role) == ("lab", "all", "device")
    assert host(inventory, "s").port == 1


def test_host_in_several_groups_merges_and_its_own_vars_win():
    inventory = parse("""
        all:
          children:
            servers:
              hosts: {s: {edgectl_role: server}}
            devices:
              vars: {edgectl_role: device, edgectl_iface: eth0, edgectl_python: py-devices}
              hosts:
                jet: {ansible_port: 2201}
            gpus:
              vars: {edgectl_python: py-gpus, edgectl_data_dir: /data}
              hosts:
                jet: {edgectl_iface: wlan0}
    """)
    jet = host(inventory, "jet")
    assert [h.name for h in inventory.hosts] == ["s", "jet"]
    assert (jet.port, jet.iface, jet.data_dir) == (2201, "wlan0", "/data")
    assert jet.python == "py-gpus"  # equal depth: groups apply in order of name


def test_null_unsets_and_aliases_and_extra_kept():
    inventory = parse("""
        all:
          vars: {edgectl_role: device, edgectl_iface: eth0, ansible_port: 2200}
          hosts:
            s: {edgectl_role: server}
            d: {edgectl_iface: null, ansible_port: null, ansible_ssh_user: bob, note: [1, 2]}
    """)
    d = host(inventory, "d")
    assert (d.iface, d.port, d.user, dict(d.extra)) == (None, 22, "bob", {"note": [1, 2]})
    assert hash(d) == hash(d) and "note" not in repr(d)


def test_relative_key_paths_resolve_against_the_inventory_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "inv.yaml").write_text(textwrap.dedent("""
        all:
          vars: {edgectl_role: device, ansible_ssh_private_key_file: keys/id_ed25519}
          hosts:
            s: {edgectl_role: server, ansible_ssh_private_key_file: /etc/k}
            d1: {edgectl_known_hosts: ../known}
            d2: {ansible_ssh_private_key_file: ~/.ssh/k, edgectl_known_hosts: ~/kh}
    """))
    monkeypatch.chdir(tmp_path)
    inventory = load_inventory("lab/inv.yaml")
    assert host(inventory, "d1").key_file == str(folder / "keys" / "id_ed25519")
    assert host(inventory, "d1").known_hosts == str(tmp_path / "known")
    assert host(inventory, "s").key_file == "/etc/k"
    d2 = host(inventory, "d2")
    assert (d2.key_file, d2.known_hosts) == (str(tmp_path / "home/.ssh/k"),
                                             str(tmp_path / "home/kh"))
    assert inventory.path == "lab/inv.yaml"


@pytest.mark.parametrize(("text", "expected"), [
    ("all: {vars: {edgectl_role: device}, children: {devices: {hosts: {pi41: "
     "{ansible_port: 22a}}}}}",
     'all.children.devices.hosts.pi41.ansible_port: expected an integer 1..65535, got "22a"'),
    ("all: {children: {devices: {vars: {ansible_port: 70000}, hosts: {pi41: }}}}",
     "all.children.devices.vars.ansible_port: expected an integer 1..65535, got 70000"),
    ("all: {children: {devices: {hosts: {pi41: {edgectl_role: sever}}}}}",
     'all.children.devices.hosts.pi41.edgectl_role: expected "server" or "device", '
     'got "sever"'),
    ("all: {hosts: {pi41: {edgectl_rol: device}}}",
     "all.hosts.pi41.edgectl_rol: unknown edgectl key; did you mean edgectl_role?"),
    ("all: {hosts: {pi41: {edgectl_zzzzzz: 1}}}",
     "all.hosts.pi41.edgectl_zzzzzz: unknown edgectl key; expected one of edgectl_role,"),
    ("all: {hosts: {pi41: {ansible_connection: paramiko}}}",
     'all.hosts.pi41.ansible_connection: expected "ssh" or "local", got "paramiko"'),
    ("all: {hosts: {pi41: {edgectl_iface: 'eth0; reboot'}}}",
     'all.hosts.pi41.edgectl_iface: expected an interface name'),
    ("all: {hosts: {pi41: {edgectl_pip_args: '--index-url \"x'}}}",
     "all.hosts.pi41.edgectl_pip_args: expected a string of pip options with balanced quotes"),
    ("all: {hosts: {pi41: {edgectl_python: ''}}}",
     'all.hosts.pi41.edgectl_python: expected a non-empty string, got ""'),
    ("all: {hosts: {pi41: {edgectl_role: null}}}",
     'all.hosts.pi41.edgectl_role: expected "server" or "device", got null'),
    ("all: {hosts: {pi41: }}",
     'all.hosts.pi41: edgectl_role is missing; set it to "server" or "device"'),
    ("all: {hosts: [pi41, pi42]}",
     "all.hosts: expected a mapping of host name -> vars, got a list"),
    ("all: {children: {devices: {hosts: {pi41: 192.168.1.41}}}}",
     'all.children.devices.hosts.pi41: expected a mapping of name -> value, got "192.168.1.41"'),
    ("all: {children: [devices]}", "all.children: expected a mapping of name -> group"),
    ("all: {children: {devices: {host: {pi41: }}}}",
     "all.children.devices.host: unknown group key; did you mean hosts?"),
    ("all: {hosts: {'pi 41': }}", 'all.hosts: expected host names of A-Z a-z 0-9'),
    ("devices: {hosts: {pi41: }}", "devices: unknown top-level key; put groups under all"),
    ("[all]", 'expected a mapping with the key "all", got a list'),
    ("all: &a {children: {x: *a}}", "all.children.x: a group inside itself (a YAML alias loop)"),
    ("", 'expected the top-level key "all"'),
    ("all: {hosts: {pi41: {edgectl_split_point: -1}}}",
     "all.hosts.pi41.edgectl_split_point: expected an integer >= 0, got -1"),
    ("all: {hosts: {pi41: {edgectl_microbatches: '4'}}}",
     'all.hosts.pi41.edgectl_microbatches: expected an integer >= 1, got "4"'),
])
def test_error_names_the_yaml_path_and_the_value(text, expected):
    assert expected in error_of(text)


def test_role_count_errors():
    assert error_of("all: {hosts: {d: {edgectl_role: device}}}") == (
        "inventory.yaml: no host has edgectl_role: server; exactly one server is needed")
    assert error_of("all: {vars: {edgectl_role: server}, hosts: {a: , "
                    "d: {edgectl_role: device}, b: }}") == (
        "inventory.yaml: 2 hosts have edgectl_role: server (a, b); "
        "exactly one server is needed")
    assert error_of("all: {hosts: {s: {edgectl_role: server}}}") == (
        "inventory.yaml: no host has edgectl_role: device; at least one device is needed")


def test_file_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_inventory("inventory.yaml")
    assert str(caught.value) == (
        "inventory.yaml: not found; pass --inventory with an existing file, "
        "or omit it to use the built-in local fleet")
    Path("inventory.yaml").write_text("all:\n  hosts:\n    pi1: {ansible_port: 22\n  vars:\n")
    with pytest.raises(ConfigError) as caught:
        load_inventory("inventory.yaml")
    message = str(caught.value)
    assert message.startswith("inventory.yaml: line ") and ": not valid YAML: " in message
    assert "\n" not in message
    Path("bad.yaml").write_text("all:\n  hosts:\n  pi1: x\n\tvars:\n")
    with pytest.raises(ConfigError, match=r"^bad\.yaml: line 4: not valid YAML: "):
        load_inventory("bad.yaml")


def test_digest_ignores_formatting_and_order_but_not_values():
    reordered = """
    all:
      children:
        devices:
          hosts:
            pi2:   {ansible_host: 10.0.0.42}
            pi1:
              ansible_host: 10.0.0.41
          vars:
            edgectl_role: device
        servers: {hosts: {srv: {ansible_host: 10.0.0.1}}, vars: {edgectl_role: server}}
      vars: {ansible_user: pi}
    """
    digest = parse(FLEET).digest()
    assert len(digest) == 64 and parse(reordered).digest() == digest
    assert parse(FLEET.replace("10.0.0.42", "10.0.0.43")).digest() != digest
    assert parse(FLEET.replace("ansible_user: pi", "ansible_user: ubuntu")).digest() != digest


def test_placement_pins_are_read_but_do_not_change_the_digest():
    pinned = parse(FLEET.replace("pi1: {ansible_host: 10.0.0.41}",
                                 "pi1: {ansible_host: 10.0.0.41, edgectl_split_point: 2,"
                                 " edgectl_microbatches: 4}"))
    assert (host(pinned, "pi1").split_point, host(pinned, "pi1").microbatches) == (2, 4)
    assert (host(pinned, "pi2").split_point, host(pinned, "pi2").microbatches) == (None, None)
    assert pinned.digest() == parse(FLEET).digest()   # same fleet, same stored profiles


def test_select_keeps_the_server_and_inventory_order():
    inventory = parse(FLEET)
    chosen = inventory.select(["pi2"])
    assert [h.name for h in chosen.hosts] == ["srv", "pi2"]
    assert [h.name for h in inventory.select(["pi2", "pi1", "srv"]).hosts] == ["srv", "pi1", "pi2"]
    with pytest.raises(ConfigError) as caught:
        inventory.select(["pi1", "pi9"])
    assert str(caught.value) == (
        'inventory.yaml: --hosts: unknown host "pi9"; known hosts: srv, pi1, pi2')
    with pytest.raises(ConfigError, match="selects no device; name at least one of: pi1, pi2"):
        inventory.select(["srv"])


def test_local_fleet():
    fleet = local_fleet()
    assert fleet.path is None and load_inventory(None) == fleet
    assert [(h.name, h.role) for h in fleet.hosts] == [
        ("server", "server"), ("device1", "device"), ("device2", "device")]
    assert all(h.is_local and h.address == "127.0.0.1" for h in fleet.hosts)
    assert fleet.digest() == parse(LOCAL_FLEET_YAML).digest()
    assert [d.name for d in local_fleet(3).devices] == ["device1", "device2", "device3"]
    with pytest.raises(ConfigError, match="at least 1 device, got 0"):
        local_fleet(0)


def test_host_validates_on_construction():
    fields = dict(name="x", address="x", port=22, user="u", key_file=None, connection="ssh",
                  role="device", python="python3", workdir="~/.edgectl", iface=None,
                  data_dir=None, known_hosts=None, pip_args=None)
    assert Host(**fields).extra == {}
    with pytest.raises(ConfigError, match='host x: role: expected "server" or "device"'):
        Host(**{**fields, "role": "client"})
    with pytest.raises(ConfigError, match="host x: port: expected an integer 1..65535, got 0"):
        Host(**{**fields, "port": 0})
