"""The `edgectl` command line: parse options, call one core function, render its result.

Every command runs inside `errors_to_exit`, the one error boundary: a user-caused error
becomes a single `error: ...` line on stderr and the exit code documented in README.md
(edgectl.errors.EXIT_CODES); only a real bug shows a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from edgectl import __version__
from edgectl.errors import EXIT_INTERRUPTED, exit_code_for

app = typer.Typer(help="Orchestrate split and pipeline-parallel training on edge testbeds.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List the model zoo; `models show NAME` shows its split points.",
                         invoke_without_command=True)
app.add_typer(models_app, name="models")
inventory_app = typer.Typer(help="Inspect the fleet an inventory describes.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")
hosts_app = typer.Typer(help="Manage trust in the fleet's SSH host keys.", no_args_is_help=True)
app.add_typer(hosts_app, name="hosts")
testbed_app = typer.Typer(help="An emulated fleet on this Linux host (root): namespaces, "
                          "sshd, CPU quotas, link rates.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")
shape_app = typer.Typer(help="Bandwidth shaping of the devices' links with tc.",
                        no_args_is_help=True)
app.add_typer(shape_app, name="shape")
profile_app = typer.Typer(help="Measure every host's per-block compute and every device's "
                          "link, or show what is stored.", invoke_without_command=True)
app.add_typer(profile_app, name="profile")
INVENTORY_OPTION = typer.Option(None, "--inventory", "-i",
                                help="Inventory YAML; default: the built-in local fleet.")
HOSTS_OPTION = typer.Option(None, "--hosts", help="Only these hosts (comma-separated names).")
MODEL_OPTION = typer.Option("vgg5", "--model", help="Model from `edgectl models`.")
DATASET_OPTION = typer.Option("fashion-mnist", "--dataset",
                              help="Dataset whose input shape to profile for.")
INPUT_OPTION = typer.Option(None, "--input", help="Input shape CxHxW (default: the dataset's).")
CLASSES_OPTION = typer.Option(None, "--classes", help="Class count (default: the dataset's).")
STORE_OPTION = typer.Option(None, "--store", help="Profile store folder (default "
                            "~/.edgectl/profiles or $EDGECTL_PROFILES).")


out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def errors_to_exit(command):
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            err.print(Text("interrupted: every agent was stopped", style="yellow"))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            code = exit_code_for(e)
            if code is None:
                raise
            err.print(Text(f"error: {e}", style="red"), soft_wrap=True)
            raise typer.Exit(code) from None
    return run


def _version(value: bool) -> None:
    if value:
        out.print(f"edgectl {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Orchestrate split and pipeline-parallel training on edge testbeds."""


@models_app.callback()
@errors_to_exit
def models(ctx: typer.Context) -> None:
    """List the models of the zoo."""
    if ctx.invoked_subcommand is None:
        from partitions.zoo import model_names
        for name in model_names():
            out.print(name)


@models_app.command("show")
@errors_to_exit
def models_show(
    name: str = typer.Argument(..., help="Model name, as listed by `edgectl models`."),
    input_shape: str = typer.Option("3x32x32", "--input", help="Input shape CxHxW."),
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Per split point: block, output shape, activation bytes, device params and FLOPs."""
    from edgectl.modelinfo import describe_model
    from edgectl.views import split_point_table

    rows = describe_model(name, input_shape, classes)
    if _check_format(fmt) == "json":
        out.print_json(json.dumps({"model": name, "input": input_shape, "split_points": rows}))
    else:
        out.print(split_point_table(name, input_shape, rows))


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        from edgectl.errors import UsageError
        raise UsageError(f"--format {fmt!r} is unknown; choose table or json")
    return fmt


@app.command()
@errors_to_exit
def train(
    strategy: str = typer.Option("pipar", help="fl, split or pipar."),
    model: str = typer.Option("vgg5", help="Model from `edgectl models`."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, kmnist, cifar10, "
                                "cifar100 or folder:PATH."),
    data_dir: str = typer.Option(None, help="Folder holding the dataset files."),
    rounds: int = typer.Option(2, help="Training rounds (FedAvg after each)."),
    batch_size: int = typer.Option(32, help="Mini-batch size B on every device."),
    split_point: int = typer.Option(None, help="Split point p: blocks [0,p) on the device. "
                                    "Default for split/pipar: the middle block boundary."),
    microbatches: int = typer.Option(None, help="Micro-batches N per mini-batch (pipar). "
                                     "Default 4."),
    max_batches: int = typer.Option(0, help="Mini-batches per device per round; 0 = the "
                                    "whole shard."),
    lr: float = typer.Option(0.01, help="SGD learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    seed: int = typer.Option(0, help="Seed for model init, data partition and order."),
    partition: str = typer.Option("iid", help="iid or dirichlet:ALPHA (label skew)."),
    batch_norm: bool = typer.Option(True, help="Use batch-norm layers in the model."),
    eval_samples: int = typer.Option(0, help="Test samples evaluated per round; 0 = all."),
    inventory: Path = INVENTORY_OPTION,
    runs_dir: Path = typer.Option(Path("runs"), help="Where run records are written."),
    shape: str = typer.Option(None, "--shape", help="Shape the links for this run only, e.g. "
                              "up=10mbit,down=25mbit (SSH fleet or testbed)."),
    bandwidth_schedule: Path = typer.Option(None, "--bandwidth-schedule", help="YAML list of "
                                            "rate changes during the run, by time or round."),
    plan_file: Path = typer.Option(None, "--plan", help="pipar: follow this saved plan "
                                   "(`edgectl plan --save`). Without it and without "
                                   "--split-point/--microbatches, pipar plans now."),
    store: str = STORE_OPTION,
) -> None:
    """Train on the fleet, showing live progress and writing runs/<run-id>/."""
    from edgectl.bandwidth_schedule import load_schedule
    from edgectl.inventory import load_inventory
    from edgectl.profiling import plan_for_training
    from edgectl.runner import train as run_training
    from edgectl.shaping import ShapeSpec
    from edgectl.train_options import TrainOptions
    from edgectl.views import LiveProgress, summary_tables

    options = TrainOptions(strategy=strategy, model=model, dataset=dataset, data_dir=data_dir,
                           rounds=rounds, batch_size=batch_size, split_point=split_point,
                           microbatches=microbatches, max_batches=max_batches, lr=lr,
                           momentum=momentum, seed=seed, partition=partition,
                           batch_norm=batch_norm, eval_samples=eval_samples)
    fleet = load_inventory(inventory)
    shape_spec = ShapeSpec.parse(shape) if shape else None
    changes = load_schedule(str(bandwidth_schedule), fleet) if bandwidth_schedule else ()
    chosen = plan_for_training(options, fleet, str(plan_file) if plan_file else None, store)
    if chosen:
        out.print(f"plan: {chosen.describe()}")
    out.print(f"training {model} on {dataset} with {strategy}: server {fleet.server.name}, "
              f"devices {', '.join(h.name for h in fleet.devices)}")
    with LiveProgress(out, [h.name for h in fleet.devices], rounds) as live:
        result = run_training(options, fleet, str(runs_dir),
                              shlex.join(["edgectl", *sys.argv[1:]]), on_event=live,
                              plan=chosen, shape=shape_spec, schedule=changes)
    out.print(summary_tables(result.summary))
    out.print(f"run record: {result.run_dir}")


def _selected(inventory: Path | None, hosts: str | None):
    from edgectl.inventory import load_inventory
    fleet = load_inventory(inventory)
    return fleet.select([h for h in hosts.split(",") if h]) if hosts else fleet


def _exit_on_failures(results) -> None:
    from edgectl.errors import EXIT_FLEET
    failed = [r for r in results if not r.ok]
    for r in failed:
        err.print(Text(f"error: {r.error}", style="red"), soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_FLEET)


@inventory_app.command("check")
@errors_to_exit
def inventory_check(inventory: Path = INVENTORY_OPTION,
                    fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """Per host: reachable, SSH latency, Python, edgectl and torch, CPU, memory, free disk."""
    from edgectl.hostinfo import check_inventory
    from edgectl.views import host_facts_table

    fleet = _selected(inventory, None)
    _check_format(fmt)
    results = check_inventory(fleet)
    if fmt == "json":
        out.print_json(json.dumps([{"host": r.host.name, "role": r.host.role, "ok": r.ok,
                                    "error": r.error, "facts": r.value and vars(r.value)}
                                   for r in results]))
    else:
        out.print(host_facts_table(results))
    if any(not r.ok for r in results):
        from edgectl.errors import EXIT_FLEET
        raise typer.Exit(EXIT_FLEET)


@hosts_app.command("trust")
@errors_to_exit
def hosts_trust(names: list[str] = typer.Argument(None, help="Hosts to trust; default all."),
                inventory: Path = INVENTORY_OPTION,
                yes: bool = typer.Option(False, "--yes", "-y",
                                         help="Record without asking (after showing).")) -> None:
    """Show each SSH host's key fingerprint and record it in known_hosts."""
    from edgectl.ssh import fetch_host_key, fingerprint, record_host_key

    fleet = _selected(inventory, ",".join(names or []))
    for host in (h for h in fleet.hosts if not h.is_local):
        key = fetch_host_key(host)
        out.print(f"{host.name} ({host.address}:{host.port}): {key.get_name()} "
                  f"{fingerprint(key)}")
        if yes or typer.confirm(f"trust this key for {host.name}?"):
            out.print(f"  recorded in {record_host_key(host, key)}")


@app.command()
@errors_to_exit
def provision(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION) -> None:
    """Install the agents on every SSH host (venv + wheel), verified by a forward pass."""
    from edgectl.provision import provision as provision_hosts
    from edgectl.views import provision_table

    results = provision_hosts(list(_selected(inventory, hosts).hosts))
    out.print(provision_table(results))
    _exit_on_failures(results)


@testbed_app.command("up")
@errors_to_exit
def testbed_up(name: str = typer.Argument(..., help="Testbed name: 1-8 of a-z, 0-9."),
               devices: int = typer.Option(2, help="Number of devices."),
               cpu: str = typer.Option("", help="CPU quota per device in cores, e.g. 0.25 or "
                                       "0.25,0.5 (one per device); empty = unthrottled."),
               server_cpu: float = typer.Option(None, help="Server CPU quota in cores."),
               link: str = typer.Option(None, help="Rate of each device's link, e.g. 20mbit."),
               state_dir: str = typer.Option(None, help="Where testbed state lives.")) -> None:
    """Create an emulated fleet: a bridge, a namespace and sshd per host, quotas, rates."""
    from edgectl import testbed

    spec = testbed.TestbedSpec(name, devices, _floats("--cpu", cpu), server_cpu, link,
                               state_dir or testbed.DEFAULT_STATE_DIR)
    made = testbed.testbed_up(spec)
    out.print(f"testbed {made.name} is up: {len(made.hosts)} hosts on {made.subnet}")
    out.print(f"inventory: {made.inventory_path}")


def _floats(option: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        from edgectl.errors import UsageError
        raise UsageError(f"{option}: expected numbers separated by commas, such as 0.25,0.5; "
                         f"got {text!r}") from None


@testbed_app.command("down")
@errors_to_exit
def testbed_down(name: str = typer.Argument(..., help="Testbed name."),
                 state_dir: str = typer.Option(None, help="Where testbed state lives.")) -> None:
    """Remove everything a testbed made: processes, namespaces, bridge, cgroups, files."""
    from edgectl import testbed

    removed = testbed.testbed_down(name, **({"state_dir": state_dir} if state_dir else {}))
    out.print(f"testbed {name} is down ({len(removed)} objects removed)")


@testbed_app.command("status")
@errors_to_exit
def testbed_status(state_dir: str = typer.Option(None, help="Where testbed state lives.")) -> None:
    """List the testbeds on this host and whether their hosts are alive."""
    from edgectl import testbed
    from edgectl.views import testbed_table

    out.print(testbed_table(testbed.testbed_status(**({"state_dir": state_dir}
                                                      if state_dir else {}))))


def _profile_request(model, dataset, input_shape, classes, batch_size, refresh, probe_seconds):
    from edgectl.profiling import request_for
    return request_for(model, dataset, input_shape, classes, batch_size, refresh=refresh,
                       probe_seconds=probe_seconds)


@profile_app.callback()
@errors_to_exit
def profile(ctx: typer.Context, inventory: Path = INVENTORY_OPTION, model: str = MODEL_OPTION,
            dataset: str = DATASET_OPTION, input_shape: str = INPUT_OPTION,
            classes: int = CLASSES_OPTION,
            batch_size: int = typer.Option(32, help="Largest batch size to time (B)."),
            refresh: bool = typer.Option(False, help="Measure again even if stored ones are "
                                         "fresh."),
            probe_seconds: float = typer.Option(2.0, help="Seconds per link direction (>= 2)."),
            calibrate: bool = typer.Option(False, help="Then train one short pipar round to "
                                           "measure the server's per-task overhead."),
            calibration_batches: int = typer.Option(12, help="Mini-batches of that round."),
            runs_dir: Path = typer.Option(Path("runs"), help="Where its run record goes."),
            store: str = STORE_OPTION) -> None:
    """Per-block forward/backward time on every host and each device's link, stored."""
    if ctx.invoked_subcommand is not None:
        return
    from edgectl.profile_store import ProfileStore
    from edgectl.profiling import profile_fleet
    from edgectl.views import profile_tables

    if calibrate and calibration_batches < 3:
        from edgectl.errors import UsageError
        raise UsageError(f"--calibration-batches {calibration_batches}: give at least 3 "
                         "(the first 2 are warm-up)")
    fleet = _selected(inventory, None)
    profiles = ProfileStore.open(store, fleet.digest())
    req = _profile_request(model, dataset, input_shape, classes, batch_size, refresh,
                           probe_seconds)
    result = profile_fleet(fleet, req, profiles)
    if calibrate:
        from edgectl.calibration import describe_calibration, run_calibration

        cal, server = run_calibration(fleet, result, profiles, dataset, calibration_batches,
                                      str(runs_dir))
        result = dataclasses.replace(result, server=server)
        out.print(f"calibrated the server: {describe_calibration(cal)}", soft_wrap=True)
    out.print(profile_tables(result, batch_size))


@profile_app.command("show")
@errors_to_exit
def profile_show(inventory: Path = INVENTORY_OPTION, store: str = STORE_OPTION) -> None:
    """List the stored profile records of this inventory, with their age."""
    from edgectl.profile_store import ProfileStore
    from edgectl.views import stored_profiles_table

    fleet = _selected(inventory, None)
    out.print(stored_profiles_table(ProfileStore.open(store, fleet.digest()).records()))


@app.command()
@errors_to_exit
def plan(inventory: Path = INVENTORY_OPTION, model: str = MODEL_OPTION,
         dataset: str = DATASET_OPTION, input_shape: str = INPUT_OPTION,
         classes: int = CLASSES_OPTION, batch_size: int = typer.Option(32, help="Batch size B."),
         batches_per_round: int = typer.Option(100, help="Mini-batches per round, over which "
                                               "the weight exchange is spread."),
         refresh: bool = typer.Option(False, help="Profile again first."),
         store: str = STORE_OPTION,
         fmt: str = typer.Option("table", "--format", help="table or json."),
         save: Path = typer.Option(None, help="Write the plan as JSON to this file.")) -> None:
    """Choose each device's split point and micro-batch count from the profiles."""
    from edgectl.profile_store import ProfileStore
    from edgectl.profiling import plan_fleet
    from edgectl.views import plan_table

    fleet = _selected(inventory, None)
    req = _profile_request(model, dataset, input_shape, classes, batch_size, refresh, 2.0)
    chosen, _ = plan_fleet(fleet, req, ProfileStore.open(store, fleet.digest()),
                           batches_per_round)
    if save:
        save.write_text(json.dumps(chosen.to_json(), indent=1) + "\n")
    if _check_format(fmt) == "json":
        out.print_json(json.dumps(chosen.to_json()))
    else:
        out.print(plan_table(chosen))
        out.print(chosen.describe())


@shape_app.command("set")
@errors_to_exit
def shape_set(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION,
              up: str = typer.Option(None, help="Uplink rate per device, e.g. 10mbit."),
              down: str = typer.Option(None, help="Downlink rate per device, e.g. 25mbit."),
              delay: str = typer.Option(None, help="Added delay, e.g. 20ms (needs netem)."),
              jitter: str = typer.Option(None, help="Delay jitter, e.g. 5ms (needs netem)."),
              loss: str = typer.Option(None, help="Packet loss, e.g. 0.5% (needs netem)."),
              measure: bool = typer.Option(True, help="Probe the links after shaping.")) -> None:
    """Shape the devices' links (agents' traffic only, never SSH); show requested and
    measured rates."""
    from edgectl.shaping import ShapeSpec
    from edgectl.shaping import shape_set as set_shaping
    from edgectl.views import shaped_table

    fleet = _selected(inventory, None)
    spec = ShapeSpec(up=up, down=down, delay=delay, jitter=jitter, loss=loss)
    names = [h for h in hosts.split(",") if h] if hosts else None
    out.print(shaped_table(set_shaping(fleet, spec, names, measure=measure)))


@shape_app.command("show")
@errors_to_exit
def shape_show(inventory: Path = INVENTORY_OPTION) -> None:
    """What edgectl applied on each host, and the qdiscs its interface has now."""
    from edgectl.shaping import shape_show as show_shaping

    results = show_shaping(_selected(inventory, None))
    for r in results:
        if not r.ok:
            err.print(Text(f"error: {r.error}", style="red"), soft_wrap=True)
            continue
        state = r.value.applied
        what = f"{state['spec']} ({state['phase']})" if state else "not shaped by edgectl"
        out.print(f"{r.host.name} {r.value.iface or ''}: {what} {r.value.note}".rstrip())
        for line in r.value.qdiscs:
            out.print(f"    {line}")
    _exit_on_failures([r for r in results if not r.ok])


@shape_app.command("clear")
@errors_to_exit
def shape_clear(inventory: Path = INVENTORY_OPTION, hosts: str = HOSTS_OPTION) -> None:
    """Remove edgectl's shaping and restore each interface's earlier qdiscs."""
    from edgectl.shaping import shape_clear as clear_shaping

    fleet = _selected(inventory, None)
    names = [h for h in hosts.split(",") if h] if hosts else None
    results = clear_shaping(fleet, names)
    for r in results:
        if r.ok:
            out.print(f"{r.host.name}: {r.value}")
    _exit_on_failures(results)


@app.command()
@errors_to_exit
def bench(spec_file: Path = typer.Argument(..., help="A bench spec (see bench/example.yaml)."),
          out_dir: Path = typer.Option(None, "--out", help="Output folder; default "
                                       "bench-results/NAME-TIME.")) -> None:
    """Run a sweep (strategies x models x bandwidths x repeats): results.csv, report.md,
    plots."""
    from edgectl.bench import default_out_dir, progress_bar, run_bench
    from edgectl.bench_spec import load_bench_spec

    spec = load_bench_spec(spec_file)
    target = out_dir or default_out_dir(spec)
    with progress_bar(out) as on_progress:
        result = run_bench(spec, target, on_progress)
    for run in result.failed:
        err.print(Text(f"failed: {run.combination.label}: {run.error}", style="red"),
                  soft_wrap=True)
    out.print(f"report: {Path(result.out_dir) / 'report.md'}")


@app.command()
@errors_to_exit
def report(run_dir: Path = typer.Argument(..., help="A run record (runs/<id>) or a bench "
                                          "output folder.")) -> None:
    """Render a run's summary as report.md and plots (timeline, accuracy, busy/idle)."""
    from edgectl.report import render_report

    for path in render_report(run_dir):
        out.print(str(path))


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's timeout) cleans up like Ctrl-C: agents stopped, tc rules
    and testbeds restored, the run record finished, instead of dying mid-change."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def main() -> None:
    interrupt_on_sigterm()
    app()
