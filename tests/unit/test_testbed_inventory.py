"""The inventory a testbed writes, without bringing one up: its CPU quotas and link rate
are part of it, so the profile store (keyed by the inventory's digest) tells testbeds of one
name but other quotas apart."""

from __future__ import annotations

import os

from edgectl.fleet.inventory import load_inventory
from edgectl.network import testbed
from edgectl.network.testbed_spec import Testbed, TestbedHost


def written(tmp_path, cpus: tuple, link: str | None = None):
    directory = tmp_path / "-".join(map(str, cpus)) / (link or "none")
    directory.mkdir(parents=True)
    hosts = tuple(
        TestbedHost(name=name, role="server" if name == "server" else "device",
                    namespace=f"ec-t-{name}", address=f"10.213.7.{10 + i}",
                    veth_host=f"ecvt-{i}", veth_ns="eth0", workdir=f"/state/t/hosts/{name}",
                    cpu=cpu)
        for i, (name, cpu) in enumerate(zip(("server", "d1", "d2"), cpus, strict=True)))
    tb = Testbed(name="t", subnet="10.213.7.0/24", bridge="ecb-t", link=link, hosts=hosts,
                 directory="/state/t", inventory_path=str(directory / "t.inventory.yaml"),
                 known_hosts_path="/state/t/known_hosts", key_path="/state/t/id_ed25519",
                 state_path="/state/t/state.json")
    testbed._write_inventory(tb)
    assert os.path.isfile(tb.inventory_path)
    return load_inventory(tb.inventory_path)


def test_quotas_and_link_are_host_vars_that_change_the_digest(tmp_path):
    slow = written(tmp_path, (1.0, 0.1, 0.1))
    assert [h.extra.get("testbed_cpu") for h in slow.hosts] == [1.0, 0.1, 0.1]
    mixed = written(tmp_path, (1.0, 0.05, 0.2))
    unthrottled = written(tmp_path, (None, None, None))
    assert "testbed_cpu" not in unthrottled.devices[0].extra
    linked = written(tmp_path, (None, None, None), "20mbit")
    assert linked.devices[0].extra["testbed_link"] == "20mbit"
    digests = {i.digest() for i in (slow, mixed, unthrottled, linked)}
    assert len(digests) == 4
    assert written(tmp_path / "again", (1.0, 0.1, 0.1)).digest() == slow.digest()
