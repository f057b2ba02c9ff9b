"""`edgectl train`: plan if asked, train on the fleet with a live view, show the summary."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shlex
import sys
from pathlib import Path

import typer

from edgectl.cli.common import (
    FIGURE_FORMAT_OPTION,
    FORMAT_OPTION,
    INVENTORY_OPTION,
    STORE_OPTION,
    ProgressLines,
    emit_json,
    err,
    errors_to_exit,
    human,
    out,
)


@errors_to_exit
def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", help="A YAML file of these options (or a "
                                "run's run.json, to repeat it); the command line overrides "
                                "it. See the README's 'Config files'."),
    strategy: str = typer.Option("pipar", help="fl, split, pipar, ecofed, plexus or "
                                "dpsgd."),
    model: str = typer.Option("vgg5", help="Model from `edgectl models`."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, kmnist, cifar10, "
                                "cifar100 or folder:PATH."),
    data_dir: str = typer.Option(None, help="Folder holding the dataset files."),
    rounds: int = typer.Option(2, help="Training rounds (FedAvg after each)."),
    batch_size: int = typer.Option(32, help="Mini-batch size B on every device."),
    split_point: int = typer.Option(None, help="Split point p: blocks [0,p) on the device. "
                                    "Default: split, the middle block boundary; pipar, "
                                    "planned. 0 needs --allow-raw-upload."),
    microbatches: int = typer.Option(None, help="Micro-batches N per mini-batch (pipar). "
                                     "Default: planned."),
    max_batches: int = typer.Option(0, help="Mini-batches per device per round; 0 = the "
                                    "whole shard."),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw, on every part of the "
                                  "model (built afresh each round, as FedAvg clients do)."),
    lr: float = typer.Option(0.01, help="Learning rate (of the first round, under a "
                             "schedule)."),
    momentum: float = typer.Option(None, help="SGD momentum (sgd only). Default 0.9."),
    weight_decay: float = typer.Option(0.0, help="Weight decay (L2 for sgd and adam, "
                                       "decoupled for adamw)."),
    lr_schedule: str = typer.Option("constant", help="constant, step or cosine, by round: "
                                    "step multiplies the rate by --lr-gamma every "
                                    "--lr-step-rounds rounds; cosine anneals it to 0 over "
                                    "--rounds."),
    lr_step_rounds: int = typer.Option(None, help="step schedule: rounds between steps "
                                       "(default 1)."),
    lr_gamma: float = typer.Option(None, help="step schedule: the factor at each step "
                                   "(default 0.1)."),
    seed: int = typer.Option(0, help="Seed for model init, data partition and order."),
    partition: str = typer.Option("iid", help="iid or dirichlet:ALPHA (label skew)."),
    batch_norm: bool = typer.Option(True, help="Use batch-norm layers in the model."),
    eval_samples: int = typer.Option(0, help="Test samples evaluated per round; 0 = all."),
    eval_every: int = typer.Option(1, help="Evaluate after every K-th round (and the last); "
                                   "evaluation time is reported apart from training."),
    inventory: Path = INVENTORY_OPTION,
    testbed: str = typer.Option(None, "--testbed", help="Train on an emulated testbed "
                                "brought up for this command and always taken down (root), "
                                "e.g. devices=2,cpu=0.1,server-cpu=1 (the options of "
                                "`edgectl testbed up`; cpu=0.1/0.2: one per device)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run records are written."),
    shape: str = typer.Option(None, "--shape", help="Shape the links for this run only, e.g. "
                              "up=10mbit,down=25mbit (SSH fleet or testbed)."),
    bandwidth_schedule: Path = typer.Option(None, "--bandwidth-schedule", help="YAML list of "
                                            "rate changes during the run, by time or round."),
    plan_file: Path = typer.Option(None, "--plan", help="pipar: follow this saved plan "
                                   "(`edgectl plan --save`). Without it, pipar plans now "
                                   "whatever of --split-point/--microbatches is not given."),
    allow_raw_upload: bool = typer.Option(False, "--allow-raw-upload", help="Allow split "
                                          "point 0: devices send raw samples to the server. "
                                          "Off by default; recorded in run.json."),
    min_split_point: int = typer.Option(None, help="pipar planning: the least split point "
                                        "the plan may choose."),
    max_microbatches: int = typer.Option(None, help="pipar planning: the most micro-batches "
                                         "the plan may choose."),
    adapt: bool = typer.Option(False, "--adapt", help="pipar: re-plan every round from "
                               "the link rates and compute times the run measured, and at "
                               "bandwidth-schedule changes."),
    min_devices: int = typer.Option(1, help="Fail the run when fewer devices than this "
                                    "remain (lost devices are waited for at round starts)."),
    heartbeat_timeout: float = typer.Option(30.0, help="Seconds without a byte from a "
                                            "device (or the server) before it counts as lost."),
    rejoin_attempts: int = typer.Option(3, help="Restarts of a lost device's agent in a row, "
                                        "with backoff; 0: never restart."),
    init_from: str = typer.Option(None, "--init-from", help="Start from this model file (a "
                                  "run's model.safetensors) instead of a fresh model."),
    resume: Path = typer.Option(None, "--resume", help="Continue this failed or interrupted "
                                "run (runs/<run-id>) from its last checkpoint, with its own "
                                "options, appending to its record."),
    dp: bool = typer.Option(False, "--dp", help="Differential privacy: DP-SGD (per-sample "
                            "clipping, Gaussian noise) on every part of the model, with the "
                            "accountant's epsilon each round. Needs --no-batch-norm and opacus "
                            "on every host. It protects the trained weights, not the "
                            "activations split and pipar send (README)."),
    dp_noise_multiplier: float = typer.Option(None, help="--dp: noise sigma, relative to "
                                              "--dp-max-grad-norm (default 1.0)."),
    dp_max_grad_norm: float = typer.Option(None, help="--dp: per-sample clipping norm C of "
                                           "the whole model's gradient (default 1.0)."),
    dp_delta: float = typer.Option(None, help="--dp: the delta of the reported epsilon "
                                   "(default 1e-5; keep it below 1 / samples per device)."),
    dp_noise_seed: int = typer.Option(None, help="--dp: fix the noise (tests, debugging). "
                                      "Whoever knows the seed can remove the noise: no "
                                      "guarantee holds."),
    device_init: str = typer.Option(None, "--device-init", help="ecofed: a model file "
                                    "(e.g. runs/RUN_ID/model.safetensors of an fl run) whose "
                                    "blocks [0,p) become the frozen device part."),
    warmup_rounds: int = typer.Option(None, help="ecofed: train the first R rounds as fl, "
                                      "then freeze the device blocks (instead of "
                                      "--device-init)."),
    quantize: str = typer.Option(None, help="ecofed: activations on the uplink as int8 "
                                 "(per tensor, the default), int8-channel or none."),
    replay_period: int = typer.Option(None, help="ecofed: devices upload fresh activations "
                                      "every K-th round; the server replays the kept ones "
                                      "in between (default 1: every round)."),
    replay_buffer_mb: float = typer.Option(None, help="ecofed: the server's replay buffer "
                                           "budget in MB (default 512); a run that needs "
                                           "more is refused before training."),
    sample_size: int = typer.Option(None, help="plexus: nodes sampled each round (from the "
                                    "nodes online; default half the fleet)."),
    topology: str = typer.Option(None, help="dpsgd: ring (the default) or regular:K, each "
                                 "node averaging with its K nearest on the ring."),
    churn: str = typer.Option(None, "--churn", help="plexus, dpsgd: an availability trace "
                              "(YAML, per device its online intervals in seconds) that the "
                              "coordinator plays by stopping and starting agents."),
    link_pacing: bool = typer.Option(True, help="Pace each device's connection to the "
                                     "server at 1.05x the rate edgectl shaped its link to "
                                     "(testbed links, --shape, a bandwidth schedule's "
                                     "round-start changes), so the shaper's queue does not "
                                     "drop what TCP sends too fast; every strategy alike."),
    store: str = STORE_OPTION,
    compare: str = typer.Option(None, "--compare", help="Then train the same work with these "
                                "strategies (e.g. fl,split) and print them side by side."),
    calibrate: bool = typer.Option(False, "--calibrate", help="pipar: before planning, train "
                                   "three short rounds to measure the agents' overheads, as "
                                   "`edgectl profile --calibrate` does, unless the stored "
                                   "profiles are calibrated already."),
    uncalibrated: bool = typer.Option(False, "--uncalibrated", help="pipar, ecofed: plan "
                                      "from the profiles as measured, without the overheads "
                                      "a calibration stored in them."),
    fmt: str = FORMAT_OPTION,
    figure_format: str = FIGURE_FORMAT_OPTION,
) -> None:
    """Train on the fleet with a live view; write runs/<run-id>/ with report.md and figures."""
    from edgectl.errors import UsageError
    from edgectl.fleet.inventory import load_inventory
    from edgectl.network.schedule import load_schedule, schedule_from_data
    from edgectl.network.shaping import ShapeSpec
    from edgectl.runs.compare import parse_baselines
    from edgectl.runs.figures import check_figure_format
    from edgectl.runs.options import TrainOptions, check_local_dataset
    from edgectl.runs.train_config import load_train_config

    values = dict(ctx.params)
    given = {k for k in values   # by name: typer vendors its own click
             if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    if resume is not None:
        _resume(resume, given, values)
        return
    if config is not None:   # the file's options, where the command line does not give them
        for key, value in load_train_config(config).items():
            param = {"plan": "plan_file"}.get(key, key)
            if param not in given:
                values[param] = value
    options = TrainOptions(**{f.name: values[f.name] for f in dataclasses.fields(TrainOptions)})
    strategy, compare = options.strategy, values["compare"]
    shape, schedule = values["shape"], values["bandwidth_schedule"]
    baselines = parse_baselines(compare, strategy)
    _check_calibrate(options, values["plan_file"])
    check_figure_format(figure_format)
    from edgectl.runs.resume import check_initial_model
    check_initial_model(options)
    shape_spec = ShapeSpec.parse(shape) if shape else None
    say = human(fmt)
    if testbed is not None:
        from edgectl.runs.testbed_fleet import parse_testbed_option, provisioned_testbed
        if "inventory" in given:
            raise UsageError("--testbed brings up its own fleet; leave out --inventory")
        fleets = provisioned_testbed(parse_testbed_option(testbed), say.print, dp=options.dp)
    else:
        fleets = contextlib.nullcontext(load_inventory(inventory))
    with fleets as fleet:
        check_local_dataset(options, fleet)
        changes = () if not schedule else \
            schedule_from_data(schedule, f"{config}: bandwidth_schedule", fleet) \
            if isinstance(schedule, list) else load_schedule(str(schedule), fleet)
        runs = _train_with_live_view(options, fleet, say, values, shape_spec, changes,
                                     baselines)
    _show_runs(runs, fmt, figure_format, compared=bool(baselines))


def _train_with_live_view(options, fleet, say, values: dict, shape_spec, changes,
                          baselines) -> list:
    from edgectl.cli.views import LiveProgress
    from edgectl.planning.calibration import describe_calibration
    from edgectl.runs.calibrate import calibrate_for_training
    from edgectl.runs.runner import plan_and_train  # torch: only once the options are valid

    plan_source, runs_dir, store = values["plan_file"], values["runs_dir"], values["store"]
    header = _header(say, options, fleet)
    command = shlex.join(["edgectl", *sys.argv[1:]])
    with LiveProgress(say, [h.name for h in fleet.devices], options.rounds) as live:
        runs = plan_and_train(options, fleet, str(runs_dir), command,
                              plan_source=plan_source if isinstance(plan_source, dict | None)
                              else str(plan_source), store=store,
                              shape=shape_spec, schedule=changes, on_event=live,
                              on_start=header, baselines=baselines,
                              calibrate=functools.partial(
                                  calibrate_for_training, options, fleet, store, str(runs_dir),
                                  command=command, on_progress=ProgressLines())
                              if options.calibrate else None,
                              on_calibrated=lambda fit: say.print(
                                  f"calibrated: server {describe_calibration(fit)}",
                                  soft_wrap=True),
                              on_progress=ProgressLines(),
                              on_warning=lambda text: err.print(f"warning: {text}",
                                                                soft_wrap=True))
    return runs


def _check_calibrate(options, plan_file) -> None:
    """--calibrate calibrates the profiles a pipar plan is made from: a run that follows a
    saved plan makes none (TrainOptions refuses the other runs that make none)."""
    from edgectl.errors import UsageError
    if options.calibrate and plan_file is not None:
        raise UsageError("--calibrate calibrates the profiles a pipar plan is made from, and "
                         "this run makes no pipar plan (it follows --plan); leave out "
                         "--calibrate, or run `edgectl profile --calibrate`")
    if options.uncalibrated and plan_file is not None:
        raise UsageError("--uncalibrated chooses the profiles a plan is made from, and this "
                         "run follows --plan; leave out --uncalibrated, or make the plan "
                         "with `edgectl plan --uncalibrated`")


RESUME_KEEPS = {"resume", "inventory", "fmt", "figure_format"}   # all else: the run's own


def _resume(run_dir: Path, given: set[str], values: dict) -> None:
    """`train --resume RUN_DIR`: the run's own options, on the inventory it ran on."""
    from edgectl.cli.views import LiveProgress
    from edgectl.errors import UsageError
    from edgectl.fleet.inventory import load_inventory
    from edgectl.runs.figures import check_figure_format
    from edgectl.runs.resume import read_run_info, resume_and_train

    extra = sorted(given - RESUME_KEEPS)
    if extra:
        raise UsageError(f"--resume continues a run with its own options; leave out "
                         f"{', '.join('--' + k.replace('_', '-') for k in extra)}")
    check_figure_format(values["figure_format"])
    info = read_run_info(run_dir)
    fleet = load_inventory(values["inventory"] if "inventory" in given else info.get("inventory"))
    say = human(values["fmt"])
    rounds = int(info["config"]["rounds"])
    with LiveProgress(say, [h.name for h in fleet.devices], rounds) as live:
        runs = resume_and_train(run_dir, fleet, shlex.join(["edgectl", *sys.argv[1:]]),
                                on_event=live, on_start=lambda strategy, plan, placements:
                                say.print(f"resuming {strategy} run {run_dir.name} from its "
                                          "last checkpoint"))
    _show_runs(runs, values["fmt"], values["figure_format"], compared=False)


def _header(say, options, fleet):
    from edgectl.cli.views import run_header

    def header(run_strategy: str, chosen, placements: dict) -> None:
        if run_strategy != options.strategy:
            say.print(f"\nbaseline {run_strategy}, the same work:")
        elif chosen:
            say.print(f"plan: {chosen.describe()}")
        for line in run_header(options, run_strategy, fleet.server.name, placements):
            say.print(line)

    return header


def _show_runs(runs, fmt: str, figure_format: str, compared: bool) -> None:
    from edgectl.cli.views import comparison_table, summary_tables
    from edgectl.runs.report import render_run_report

    reports = [render_run_report(r.run_dir, figure_format) for r in runs]
    if fmt == "json":   # what each run wrote as summary.json, and where its record is
        emit_json({"runs": [{"strategy": r.strategy, "run_dir": r.run_dir,
                             "summary": r.summary.to_json(),
                             "report_files": [str(f) for f in files]}
                            for r, files in zip(runs, reports, strict=True)],
                   "comparison": [dataclasses.asdict(r) | {"summary": None} for r in runs]
                   if compared else None})
        return
    out.print(summary_tables(runs[0].summary))
    if compared:
        out.print(comparison_table(runs))
    out.print("run record: " + ", ".join(r.run_dir for r in runs))
    out.print(f"report and {figure_format} figures: "
              + ", ".join(str(files[0]) for files in reports), soft_wrap=True)
