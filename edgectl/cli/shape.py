"""`edgectl shape set/show/clear`: tc bandwidth shaping of the devices' links."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.text import Text

from edgectl.cli.common import (
    FORMAT_OPTION,
    HOSTS_OPTION,
    INVENTORY_OPTION,
    check_format,
    emit_json,
    err,
    errors_to_exit,
    exit_on_failures,
    out,
    results_json,
    selected,
)


@errors_to_exit
def shape_set(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION,
              up: str = typer.Option(None, help="Uplink rate per device, e.g. 10mbit."),
              down: str = typer.Option(None, help="Downlink rate per device, e.g. 25mbit."),
              delay: str = typer.Option(None, help="Added delay, e.g. 20ms (needs netem)."),
              jitter: str = typer.Option(None, help="Delay jitter, e.g. 5ms (needs netem)."),
              loss: str = typer.Option(None, help="Packet loss, e.g. 0.5% (needs netem)."),
              measure: bool = typer.Option(True, help="Probe the links after shaping."),
              fmt: str = FORMAT_OPTION) -> None:
    """Shape the devices' links (agents' traffic only, never SSH); show requested and
    measured rates."""
    from edgectl.cli.views import shaped_table
    from edgectl.network.shaping import ShapeSpec
    from edgectl.network.shaping import shape_set as set_shaping
    from edgectl.network.shaping_state import applied_label
    from edgectl.planning.profiling import measure_links
    from edgectl.planning.store import ProfileStore

    check_format(fmt)
    fleet = selected(inventory, None)
    spec = ShapeSpec(up=up, down=down, delay=delay, jitter=jitter, loss=loss)
    names = [h for h in hosts.split(",") if h] if hosts else None
    keep = (ProfileStore.open(None, fleet.digest()), applied_label)   # plans under it reuse them
    probe = functools.partial(measure_links, keep=keep) if measure else None
    shaped = set_shaping(fleet, spec, names, probe=probe)
    if fmt == "json":
        emit_json({"shaped": shaped})
    else:
        out.print(shaped_table(shaped))


@errors_to_exit
def shape_show(inventory: Path = INVENTORY_OPTION, fmt: str = FORMAT_OPTION) -> None:
    """What edgectl applied on each host, and the qdiscs its interface has now."""
    from edgectl.network.shaping import shape_show as show_shaping

    check_format(fmt)
    results = show_shaping(selected(inventory, None))
    if fmt == "json":
        emit_json({"hosts": results_json(results)})
        exit_on_failures([r for r in results if not r.ok])
        return
    for r in results:
        if not r.ok:
            err.print(Text(f"error: {r.error}", style="red"), soft_wrap=True)
            continue
        state = r.value.applied
        what = f"{state['spec']} ({state['phase']})" if state else "not shaped by edgectl"
        out.print(f"{r.host.name} {r.value.iface or ''}: {what} {r.value.note}".rstrip())
        for line in r.value.qdiscs:
            out.print(f"    {line}")
    exit_on_failures([r for r in results if not r.ok])


@errors_to_exit
def shape_clear(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION,
                fmt: str = FORMAT_OPTION) -> None:
    """Remove edgectl's shaping and restore each interface's earlier qdiscs."""
    from edgectl.network.shaping import shape_clear as clear_shaping

    check_format(fmt)
    fleet = selected(inventory, None)
    names = [h for h in hosts.split(",") if h] if hosts else None
    results = clear_shaping(fleet, names)
    if fmt == "json":
        emit_json({"hosts": results_json(results)})
        exit_on_failures(results)
        return
    for r in results:
        if r.ok:
            out.print(f"{r.host.name}: {r.value}")
    exit_on_failures(results)
