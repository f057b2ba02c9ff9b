"""`edgectl inventory check`, `hosts trust` and `provision`: the fleet's hosts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgectl.cli.common import (
    FORMAT_OPTION,
    HOSTS_OPTION,
    INVENTORY_OPTION,
    check_format,
    emit_json,
    errors_to_exit,
    exit_on_failures,
    human,
    out,
    results_json,
    selected,
)
from edgectl.errors import EXIT_FLEET


@errors_to_exit
def inventory_check(inventory: Path = INVENTORY_OPTION,
                    fmt: str = FORMAT_OPTION) -> None:
    """Per host: reachable, SSH latency, Python, edgectl and torch, CPU, memory, free disk."""
    from edgectl.cli.views import host_facts_table
    from edgectl.fleet.hostinfo import check_inventory

    fleet = selected(inventory, None)
    check_format(fmt)
    results = check_inventory(fleet)
    if fmt == "json":
        out.print_json(json.dumps([{"host": r.host.name, "role": r.host.role, "ok": r.ok,
                                    "error": r.error, "facts": r.value and vars(r.value)}
                                   for r in results]))
    else:
        out.print(host_facts_table(results))
    if any(not r.ok for r in results):
        raise typer.Exit(EXIT_FLEET)


@errors_to_exit
def hosts_trust(names: list[str] = typer.Argument(None, help="Hosts to trust; default all."),
                inventory: Path = INVENTORY_OPTION,
                yes: bool = typer.Option(False, "--yes", "-y",
                                         help="Record without asking (after showing)."),
                fmt: str = FORMAT_OPTION) -> None:
    """Show each SSH host's key fingerprint and record it in known_hosts."""
    say = human(fmt)
    fleet = selected(inventory, ",".join(names or []))
    from edgectl.fleet.ssh import fetch_host_key, fingerprint, record_host_key  # fabric
    hosts = []
    for host in (h for h in fleet.hosts if not h.is_local):
        key = fetch_host_key(host)
        shown = {"host": host.name, "address": host.address, "port": host.port,
                 "key_type": key.get_name(), "fingerprint": fingerprint(key),
                 "recorded_in": None}
        say.print(f"{host.name} ({host.address}:{host.port}): {shown['key_type']} "
                  f"{shown['fingerprint']}")
        if yes or typer.confirm(f"trust this key for {host.name}?", err=fmt == "json"):
            shown["recorded_in"] = str(record_host_key(host, key))
            say.print(f"  recorded in {shown['recorded_in']}")
        hosts.append(shown)
    if fmt == "json":
        emit_json({"hosts": hosts})


@errors_to_exit
def provision(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION,
              dp: bool = typer.Option(False, "--dp", help="Also install opacus, which "
                                      "`edgectl train --dp` needs on every host."),
              fmt: str = FORMAT_OPTION) -> None:
    """Install the agents on every SSH host (venv + wheel), verified by a forward pass."""
    from edgectl.cli.views import provision_table
    from edgectl.fleet.provision import provision as provision_hosts

    check_format(fmt)
    results = provision_hosts(list(selected(inventory, hosts).hosts), dp=dp)
    if fmt == "json":
        emit_json({"hosts": results_json(results)})
    else:
        out.print(provision_table(results))
    exit_on_failures(results)
