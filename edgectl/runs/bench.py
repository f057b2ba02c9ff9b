"""`edgectl bench SPEC.yaml`: a sweep of training runs, and the tables and plots comparing them.

`run_bench` runs every combination of a BenchSpec (edgectl/runs/bench_spec.py: setting x
strategy x model x bandwidth x repeat) as a normal `train` run whose record lands in
OUT/runs/, with the links shaped around each shaped combination (edgectl.network.shaping)
and a setting's bandwidth schedule applied during its runs. The combinations come grouped
by the testbed their setting needs: each testbed is brought up and provisioned once, before
its group, and always taken down after it, on success, error and Ctrl-C alike. A failed
combination is recorded with its error and the sweep goes on.

OUT/ ends up holding:

    bench.json      the spec (with every setting's values) and every run's outcome,
                    rewritten after each run
    runs/<run-id>/  one run record per combination (run.json's "bench" notes the setting)
    results.csv     one row per run, one column per swept key (edgectl.runs.sweep_report)
    summary.csv     the repeats of each condition aggregated (edgectl.runs.sweep_summary)
    report.md       the paper's comparison per model, the aggregated repeats, every run,
                    and the plots with captions
    *.png           round time against bandwidth, idle time per resource, accuracy against
                    wall time, and the pipeline timeline of one iteration per strategy
                    (.svg or .pdf instead with --figure-format)

Everything in the CSVs, report.md and the plots is computed from the run records'
events; `edgectl report OUT` writes them again from the records.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgectl.runs.bench_spec import (
    Bandwidth,
    BenchRun,
    BenchSpec,
    Combination,
    TestbedRequest,
)
from edgectl.runs.sweep_report import write_bench_outputs


@dataclass(frozen=True)
class BenchProgress:
    completed: float   # runs finished, plus the running one's share of its mini-batches
    total: int
    current: str       # the combination running, or what the sweep is doing


ProgressCallback = Callable[[BenchProgress], None]


@dataclass(frozen=True)
class BenchResult:
    out_dir: Path
    runs: tuple[BenchRun, ...]
    files: tuple[Path, ...]  # results.csv, report.md, the plots

    @property
    def failed(self) -> tuple[BenchRun, ...]:
        return tuple(r for r in self.runs if r.status != "completed")


def default_out_dir(spec: BenchSpec, root: str | os.PathLike = "bench-results") -> Path:
    """Where a sweep goes when the user names no folder: ROOT/NAME-YYYYmmdd-HHMMSS."""
    return Path(root) / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_bench(spec: BenchSpec, out_dir: str | os.PathLike,
              on_progress: ProgressCallback = lambda p: None,
              figure_format: str = "png") -> BenchResult:
    """Run the sweep `spec` describes into `out_dir` (see the module docstring), its
    figures in `figure_format` (png, svg or pdf)."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    combinations = spec.combinations()
    groups = [(tb, list(g)) for tb, g in
              itertools.groupby(combinations, key=lambda c: spec.testbed_of(c.setting))]
    tracker = _Tracker(len(combinations), on_progress)
    runs: list[BenchRun] = []
    notes = [f"- spec: `{spec.source}`", f"- started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
             f"{len(combinations)} runs"]
    try:
        for testbed, group in groups:
            with bench_fleet(spec, testbed, tracker.phase) as (inventory, fleet_note):
                notes.append(_fleet_line(group, fleet_note, len(groups)))
                for combination in group:
                    values, _ = spec.option_values(combination)
                    tracker.start(len(runs), combination.label, len(inventory.devices),
                                  values.get("rounds", spec.rounds))
                    _run_one(spec, combination, inventory, out, tracker.on_event, runs)
                    _save_bench_json(out, spec, runs, notes)
    except BaseException:  # Ctrl-C, a testbed that would not come up: keep what finished
        _save_bench_json(out, spec, runs, notes)
        if runs:
            with contextlib.suppress(Exception):
                write_bench_outputs(out, spec.name, runs, notes, spec.axes, figure_format)
        raise
    tracker.phase("writing results.csv, summary.csv, report.md and plots")
    files = write_bench_outputs(out, spec.name, runs, notes, spec.axes, figure_format)
    tracker.finish()
    return BenchResult(out, tuple(runs), tuple(files))


def _fleet_line(group: Sequence[Combination], fleet_note: str, fleets: int) -> str:
    if fleets == 1:
        return f"- fleet: {fleet_note}"
    labels = list(dict.fromkeys(c.setting.label for c in group))
    return f"- fleet of {', '.join(labels)}: {fleet_note}"


@contextmanager
def bench_fleet(spec: BenchSpec, req: TestbedRequest | None,
                phase: Callable[[str], None]) -> Iterator[tuple]:
    """(inventory, a line describing it): the testbed `req` brought up and provisioned now
    and always taken down when the block ends, or without one the spec's inventory or the
    local fleet."""
    from edgectl.fleet.inventory import load_inventory

    if req is None:
        inventory = load_inventory(spec.inventory)
        yield inventory, (f"inventory {inventory.path}" if inventory.path
                          else "the built-in local fleet")
        return
    from edgectl.network.testbed_spec import TestbedSpec
    from edgectl.runs.testbed_fleet import provisioned_testbed

    dp = any(s.options.get("dp") for s in spec.settings)   # opacus, where a run needs it
    with provisioned_testbed(TestbedSpec(req.name, req.devices, req.cpu, req.server_cpu,
                                         req.link, req.state_dir), phase, dp=dp) as inventory:
        cpu = ", ".join(f"{c:g}" for c in req.cpu) or "unthrottled"
        yield inventory, (f"testbed {req.name}: {req.devices} devices, CPU {cpu} cores, "
                          f"server CPU {req.server_cpu or 'unthrottled'}, "
                          f"link {req.link or 'unshaped'}")


def _run_one(spec: BenchSpec, combination: Combination, inventory, out: Path,
             on_event: Callable[[dict], None], runs: list[BenchRun]) -> None:
    """One combination as a train run, its outcome appended to `runs` however it ends: a
    failure is an outcome and the sweep goes on; Ctrl-C is recorded, then re-raised."""
    from edgectl.network.schedule import load_schedule
    from edgectl.network.shaping_state import applied_label
    from edgectl.planning.fleet_plans import plan_for_training
    from edgectl.runs.calibrate import calibrate_for_training
    from edgectl.runs.runner import train

    runs_dir = out / "runs"
    before = set(os.listdir(runs_dir))
    shaping: tuple[dict, ...] = ()
    command = f"edgectl bench {spec.source}  # {combination.label}"
    status, run_dir, error = "failed", None, None
    try:
        options = spec.train_options(combination)
        schedule = combination.setting.schedule
        changes = load_schedule(schedule, inventory) if schedule else ()
        with shaped_links(inventory, combination.bandwidth) as applied:
            shaping = tuple(_shaped_json(s) for s in applied)
            if options.calibrate:   # once per model and shaping: kept in the profiles
                calibrate_for_training(options, inventory, None, str(out / "calibration"),
                                       link_label=applied_label, shaping=applied,
                                       command=command)
            plan = plan_for_training(options, inventory, None, None,
                                     link_label=applied_label)
            run_dir = train(options, inventory, str(runs_dir), command, on_event=on_event,
                            plan=plan, shaping=applied, schedule=changes).run_dir
        status = "completed"
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except Exception as exc:  # a failed run is an outcome: the sweep goes on
        error = " ".join(str(exc).split()) or type(exc).__name__
    finally:
        run_dir = run_dir or _new_run_dir(runs_dir, before)
        if run_dir:
            _note_bench(Path(run_dir), spec, combination, shaping)
        runs.append(BenchRun(combination, status, os.path.relpath(run_dir, out) if run_dir
                             else None, error, shaping))


@contextmanager
def shaped_links(inventory, bandwidth: Bandwidth) -> Iterator[list]:
    """The devices' links shaped to `bandwidth` for the block (nothing for unshaped);
    yields per device what was set and measured (edgectl.network.shaping.Shaped)."""
    if not bandwidth.shaped:
        yield []
        return
    from edgectl.network.shaping import ShapeSpec, shaped
    from edgectl.network.shaping_state import applied_label
    from edgectl.planning.profiling import measure_links
    from edgectl.planning.store import ProfileStore

    keep = (ProfileStore.open(None, inventory.digest()), applied_label)  # pipar's plan reads them
    with shaped(inventory, ShapeSpec(up=bandwidth.up, down=bandwidth.down),
                probe=functools.partial(measure_links, keep=keep)) as applied:
        yield applied


def _shaped_json(s: object) -> dict:
    fields = ("device", "up", "down", "measured_up_bps", "measured_down_bps")
    out = {f: getattr(s, f, None) for f in fields}
    out["device"] = getattr(out["device"], "name", out["device"])
    return out


def _new_run_dir(runs_dir: Path, before: set[str]) -> str | None:
    made = sorted(set(os.listdir(runs_dir)) - before)
    return str(runs_dir / made[-1]) if made else None


def _note_bench(run_dir: Path, spec: BenchSpec, c: Combination, shaping) -> None:
    """Add the bench settings (setting and its values, the options of the setting that do
    not apply to this strategy, bandwidth, repeat, shaping measured) to run.json."""
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    setting = c.setting.to_json()
    info["bench"] = {"name": spec.name, "setting": c.setting.label,
                     "values": setting["values"],
                     "not_applied": list(spec.option_values(c)[1]),
                     "bandwidth_schedule": c.setting.schedule,
                     "bandwidth": c.bandwidth.label, "up": c.bandwidth.up,
                     "down": c.bandwidth.down, "repeat": c.repeat, "shaping": list(shaping)}
    _write_json_atomic(path, info)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _save_bench_json(out: Path, spec: BenchSpec, runs: Sequence[BenchRun],
                     notes: Sequence[str]) -> None:
    _write_json_atomic(out / "bench.json", {"name": spec.name, "spec": spec.to_json(),
                                            "notes": list(notes),
                                            "runs": [r.to_json() for r in runs]})

# --- progress ---------------------------------------------------------------------------------

class _Tracker:
    """Turns the sweep's steps and the runs' progress events into BenchProgress calls;
    within a run, the share of its mini-batches done over all devices, never backwards."""

    def __init__(self, total: int, on_progress: ProgressCallback):
        self.total, self.report = total, on_progress
        self.index, self.label, self.devices, self.rounds = 0, "", 1, 1
        self.share: dict[str, float] = {}
        self.done = 0.0

    def _emit(self, current: str) -> None:
        running = sum(self.share.values()) / max(self.devices, len(self.share), 1)
        self.done = max(self.done, self.index + min(running, 0.99))
        self.report(BenchProgress(self.done, self.total, current))

    def phase(self, text: str) -> None:
        self._emit(text)

    def start(self, index: int, label: str, devices: int, rounds: int) -> None:
        self.index, self.label, self.devices, self.share = index, label, devices, {}
        self.rounds = max(rounds, 1)
        self._emit(label)

    def on_event(self, event: dict) -> None:
        if event.get("type") == "progress" and event.get("batches"):
            self.share[event["host"]] = ((event["round"] - 1 + event["batch"] / event["batches"])
                                         / self.rounds)
            self._emit(self.label)

    def finish(self) -> None:
        self.report(BenchProgress(self.total, self.total, "done"))


@contextmanager
def progress_bar(console=None) -> Iterator[ProgressCallback]:
    """A rich progress bar over the whole sweep (runs done, the current combination, time
    elapsed and an ETA); yields the callback to pass to run_bench as `on_progress`."""
    from rich import progress as rp

    columns = (rp.TextColumn("{task.fields[runs]}"), rp.BarColumn(),
               rp.TextColumn("{task.percentage:>3.0f}%"), rp.TimeElapsedColumn(),
               rp.TextColumn("eta"), rp.TimeRemainingColumn(), rp.TextColumn("{task.description}"))
    # a long speed window: the ETA averages over whole runs, not the last few batches
    with rp.Progress(*columns, console=console, speed_estimate_period=3600) as progress:
        task = progress.add_task("starting", total=None, runs="")

        def update(p: BenchProgress) -> None:
            progress.update(task, total=p.total, completed=p.completed, description=p.current,
                            runs=f"run {min(int(p.completed) + 1, p.total)}/{p.total}"
                            if p.completed < p.total else f"{p.total} runs")
        yield update
