"""`edgectl testbed up/down/status`: an emulated fleet on this Linux host."""

from __future__ import annotations

import dataclasses

import typer

from edgectl.cli.common import FORMAT_OPTION, check_format, emit_json, errors_to_exit, human, out
from edgectl.errors import UsageError


@errors_to_exit
def testbed_up(name: str = typer.Argument(..., help="Testbed name: 1-8 of a-z, 0-9."),
               devices: int = typer.Option(2, help="Number of devices."),
               cpu: str = typer.Option("", help="CPU quota per device in cores, e.g. 0.25 or "
                                       "0.25,0.5 (one per device); empty = unthrottled."),
               server_cpu: float = typer.Option(None, help="Server CPU quota in cores."),
               link: str = typer.Option(None, help="Rate of each device's link, e.g. 20mbit."),
               state_dir: str = typer.Option(None, help="Where testbed state lives."),
               fmt: str = FORMAT_OPTION) -> None:
    """Create an emulated fleet: a bridge, a namespace and sshd per host, quotas, rates."""
    from edgectl.network import testbed

    spec = testbed.TestbedSpec(name, devices, _floats("--cpu", cpu), server_cpu, link,
                               state_dir or testbed.DEFAULT_STATE_DIR)
    say = human(fmt)
    made = testbed.testbed_up(spec)
    if fmt == "json":
        emit_json(made)
    say.print(f"testbed {made.name} is up: {len(made.hosts)} hosts on {made.subnet}")
    say.print(f"inventory: {made.inventory_path}")


def _floats(option: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option}: expected numbers separated by commas, such as 0.25,0.5; "
                         f"got {text!r}") from None


@errors_to_exit
def testbed_down(name: str = typer.Argument(..., help="Testbed name."),
                 state_dir: str = typer.Option(None, help="Where testbed state lives."),
                 fmt: str = FORMAT_OPTION) -> None:
    """Remove everything a testbed made: processes, namespaces, bridge, cgroups, files."""
    from edgectl.network import testbed

    say = human(fmt)
    removed = testbed.testbed_down(name, **({"state_dir": state_dir} if state_dir else {}))
    if fmt == "json":
        emit_json({"name": name, "removed": removed})
    say.print(f"testbed {name} is down ({len(removed)} objects removed)")


@errors_to_exit
def testbed_status(state_dir: str = typer.Option(None, help="Where testbed state lives."),
                   fmt: str = FORMAT_OPTION) -> None:
    """List the testbeds on this host and whether their hosts are alive."""
    from edgectl.cli.views import testbed_table
    from edgectl.network import testbed

    found = testbed.testbed_status(**({"state_dir": state_dir} if state_dir else {}))
    if check_format(fmt) == "json":
        emit_json({"testbeds": [dataclasses.asdict(tb) | {"healthy": tb.healthy}
                                for tb in found]})
    else:
        out.print(testbed_table(found))
