"""The `edgectl` command tree: which command module answers which command.

Each command module parses its options, calls one core function and renders the result
(edgectl.cli.common holds what they share, the error boundary first); this module only
puts them together into one Typer application and starts it.
"""

from __future__ import annotations

import signal

import typer

from edgectl import __version__
from edgectl.cli import bench, evaluate, fleet, models, profile, runs, shape, testbed, train
from edgectl.cli.common import out

app = typer.Typer(help="Orchestrate split and pipeline-parallel training on edge testbeds.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List the model zoo; `models show NAME` shows its split points.",
                         invoke_without_command=True)
inventory_app = typer.Typer(help="Inspect the fleet an inventory describes.",
                            no_args_is_help=True)
hosts_app = typer.Typer(help="Manage trust in the fleet's SSH host keys.", no_args_is_help=True)
testbed_app = typer.Typer(help="An emulated fleet on this Linux host (root): namespaces, sshd, "
                          "CPU quotas, link rates.", no_args_is_help=True)
shape_app = typer.Typer(help="Bandwidth shaping of the devices' links with tc.",
                        no_args_is_help=True)
profile_app = typer.Typer(help="Measure every host's per-block compute and every device's "
                          "link, or show what is stored.", invoke_without_command=True)
runs_app = typer.Typer(help="List the run records; `runs compare A B` puts runs side by side.",
                       invoke_without_command=True)
for group, name in ((models_app, "models"), (inventory_app, "inventory"), (hosts_app, "hosts"),
                    (testbed_app, "testbed"), (shape_app, "shape"), (profile_app, "profile")):
    app.add_typer(group, name=name)
app.add_typer(runs_app, name="runs")

app.command()(train.train)
app.command()(fleet.provision)
app.command()(profile.plan)
app.command()(bench.bench)
app.command()(bench.report)
app.command()(evaluate.evaluate)
models_app.callback()(models.models)
models_app.command("show")(models.models_show)
inventory_app.command("check")(fleet.inventory_check)
hosts_app.command("trust")(fleet.hosts_trust)
testbed_app.command("up")(testbed.testbed_up)
testbed_app.command("down")(testbed.testbed_down)
testbed_app.command("status")(testbed.testbed_status)
profile_app.callback()(profile.profile)
profile_app.command("show")(profile.profile_show)
shape_app.command("set")(shape.shape_set)
shape_app.command("show")(shape.shape_show)
shape_app.command("clear")(shape.shape_clear)
runs_app.callback()(runs.runs_list)
runs_app.command("compare")(runs.runs_compare)


def _version(value: bool) -> None:
    if value:
        out.print(f"edgectl {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Orchestrate split and pipeline-parallel training on edge testbeds."""


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's timeout) cleans up like Ctrl-C: agents stopped, tc rules
    and testbeds restored, the run record finished, instead of dying mid-change."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def main() -> None:
    interrupt_on_sigterm()
    app()
