"""The outputs of a sweep: results.csv, summary.csv, report.md and plots, from its run records.

`bench_rows` turns the sweep's runs (their `RunMetrics`, edgectl/runs/report.py, whose
Note defines round time, speedup and idle time) into one row per run, with its setting's
value of every swept key and the speedups between runs of one condition (setting, model,
bandwidth); `write_results_csv` and `bench_markdown` render them, edgectl/runs/sweep_summary.py
aggregates their repeats (summary.csv, the paper's comparison), `bench_plots` draws the
figures. `write_bench_outputs` writes all of it into a bench folder and
`rewrite_bench_outputs` writes it again from the folder's bench.json. `render_report` is
`edgectl report PATH`: a bench folder's outputs, or one run's report.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from edgectl.runs.bench_spec import BenchRun, Combination, slug
from edgectl.runs.figures import figure_name
from edgectl.runs.report import RunMetrics, metrics_of, render_run_report
from edgectl.runs.sweep_summary import (
    aggregate,
    aggregate_markdown,
    num_text,
    paper_markdown,
    summary_columns,
    summary_rows,
)

CSV_COLUMNS = ("strategy", "model", "bandwidth", "up", "down", "repeat", "setting", "status",
               "error", "run_dir", "rounds", "batches_per_round", "iteration_s_median",
               "iteration_s_min", "iteration_s_max", "round_s_median", "round_s_min",
               "round_s_max", "speedup_over_fl", "speedup_over_split", "server_idle_fraction",
               "device_idle_fraction", "bytes_up_per_round", "bytes_down_per_round",
               "final_accuracy", "epsilon", "train_s", "server_busy_s", "server_idle_s", "plan")


def results_columns(axes: Sequence[str]) -> tuple[str, ...]:
    """results.csv's columns: CSV_COLUMNS with one per swept key after "setting" (named
    "setting.KEY" where KEY is also a measured column, such as rounds)."""
    at = CSV_COLUMNS.index("setting") + 1
    return (*CSV_COLUMNS[:at], *map(axis_column, axes), *CSV_COLUMNS[at:])


def axis_column(axis: str) -> str:
    return f"setting.{axis}" if axis in CSV_COLUMNS else axis


def _condition(c: Combination) -> tuple[str, str, str]:
    return (c.setting.label, c.model, c.bandwidth.label)


def bench_rows(runs: Sequence[BenchRun], metrics: dict[str, RunMetrics]) -> list[dict]:
    """One row per run (results_columns, plus "values": its setting's values), metrics
    keyed by run_dir (completed runs only)."""
    pooled: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        m = metrics.get(run.run_dir or "")
        if m:
            pooled[(run.combination.strategy, *_condition(run.combination))].extend(m.round_s)
    rows = []
    for run in runs:
        c, m = run.combination, metrics.get(run.run_dir or "")
        values = dict(c.setting.values)
        row = {"strategy": c.strategy, "model": c.model, "bandwidth": c.bandwidth.label,
               "up": c.bandwidth.up, "down": c.bandwidth.down, "repeat": c.repeat,
               "setting": c.setting.label, **{axis_column(k): v for k, v in values.items()},
               "values": values,
               "status": run.status, "error": run.error, "run_dir": run.run_dir}
        if m:
            row.update(_metric_columns(m))
            for base in ("fl", "split"):
                baseline = pooled.get((base, *_condition(c)))
                mine = row["round_s_median"]
                row[f"speedup_over_{base}"] = (statistics.median(baseline) / mine
                                               if baseline and mine else None)
        rows.append(row)
    return rows


def _metric_columns(m: RunMetrics) -> dict:
    def spread(name: str, values: Sequence[float]) -> dict:
        return {f"{name}_median": statistics.median(values) if values else None,
                f"{name}_min": min(values, default=None),
                f"{name}_max": max(values, default=None)}

    return {"rounds": m.rounds, "batches_per_round": m.batches_per_round,
            **spread("iteration_s", m.iteration_s), **spread("round_s", m.round_s),
            "server_idle_fraction": m.idle.get("server.compute"),
            "device_idle_fraction": m.idle.get("device.compute"),
            "bytes_up_per_round": m.bytes_up_per_round,
            "bytes_down_per_round": m.bytes_down_per_round,
            "final_accuracy": m.final_accuracy, "epsilon": m.epsilon, "train_s": m.train_s,
            "server_busy_s": m.server_busy_s, "server_idle_s": m.server_idle_s,
            "plan": m.plan}


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return path


def write_results_csv(rows: Sequence[dict], path: Path, axes: Sequence[str] = ()) -> Path:
    return write_csv(rows, results_columns(axes), path)


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return " ".join(str(_csv_value(v)) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else value


def _spread(row: dict, name: str, scale: float, fmt: str) -> str:
    if row.get(f"{name}_median") is None:
        return "-"
    lo, mid, hi = (row[f"{name}_{k}"] * scale for k in ("min", "median", "max"))
    return f"{mid:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def bench_markdown(title: str, rows: Sequence[dict], plots: Sequence[tuple[Path, str]],
                   notes: Sequence[str] = ()) -> str:
    aggs = aggregate(rows)
    lines = [f"# Bench {title}", "", *notes, "",
             "Training time = the rounds' training time (weights down, every mini-batch, "
             "weights up; evaluation excluded); round time = one round's; iteration = round "
             "time / mini-batches. Server idle = training time minus the server compute's "
             "busy time. A condition is one setting, model and bandwidth; its strategies "
             "ran side by side in each repeat.", "",
             "## PiPar against fl and split", "",
             "Medians over the repeats (n per strategy). Speedup = the baseline's training "
             "time / pipar's (below 1: pipar was slower); idle factor = the baseline "
             "server's idle time / pipar's. The plan is what pipar ran (p: blocks on the "
             "device, N: micro-batches)."]
    lines += paper_markdown(aggs) or ["", "No pipar runs completed: nothing to compare."]
    lines += ["", "## Repeats aggregated", "",
              "Median (min-max) over the completed repeats of each run's median; n = "
              "completed / run. vs fl, vs split: speedup in training time. Also in "
              "summary.csv."]
    lines += aggregate_markdown(aggs)
    lines += ["", "## Runs", "",
              "Times are median (min-max) over the run's rounds; speedups compare median "
              "round times within the condition. Idle = share of the training time the "
              "server's compute, or a device's compute (mean over devices), did nothing."]
    lines += _runs_markdown(rows)
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['strategy']} {r['model']} {r['bandwidth']} "
                  f"{r['setting'] + ' ' if r.get('setting') else ''}#{r['repeat']}: "
                  f"{r['error']}" for r in failed]
    lines += ["", "## Plots", ""]
    lines += [f"- `{path.name}`: {caption}" for path, caption in plots]
    return "\n".join(lines) + "\n"


def _runs_markdown(rows: Sequence[dict]) -> list[str]:
    """One table per condition (setting, model, bandwidth), one row per run."""
    lines = []
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row.get("setting") or "", row["model"], row["bandwidth"])].append(row)
    for (setting, model, bandwidth), group in groups.items():
        private = any(r.get("epsilon") is not None for r in group)
        lines += ["", f"### {setting + ': ' if setting else ''}{model}, {bandwidth}", "",
                  "| strategy | repeat | status | iteration ms | round s | vs fl | vs split | "
                  "server idle | device idle | MB up/round | MB down/round | accuracy |"
                  + (" epsilon |" if private else ""),
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: |" + (" ---: |" if private else "")]
        for r in group:
            lines.append(
                f"| {r['strategy']} | {r['repeat']} | {r['status']} | "
                f"{_spread(r, 'iteration_s', 1e3, '.1f')} | {_spread(r, 'round_s', 1, '.2f')} "
                f"| {num_text(r.get('speedup_over_fl'), '.2f', suffix='x')} "
                f"| {num_text(r.get('speedup_over_split'), '.2f', suffix='x')} "
                f"| {num_text(r.get('server_idle_fraction'), '.0f', 100, '%')} "
                f"| {num_text(r.get('device_idle_fraction'), '.0f', 100, '%')} "
                f"| {num_text(r.get('bytes_up_per_round'), '.2f', 1e-6)} "
                f"| {num_text(r.get('bytes_down_per_round'), '.2f', 1e-6)} "
                f"| {num_text(r.get('final_accuracy'), '.1f', 100, '%')} |"
                + (f" {num_text(r.get('epsilon'), '.2f')} |" if private else ""))
    return lines


def rewrite_bench_outputs(out_dir: str | os.PathLike, figure_format: str = "png") -> list[Path]:
    """The CSVs, report.md and the plots of a bench folder, again from its records."""
    out = Path(out_dir)
    data = json.loads((out / "bench.json").read_text())
    runs = [BenchRun.from_json(r) for r in data["runs"]]
    return write_bench_outputs(out, data["name"], runs, data.get("notes", []),
                               tuple(data.get("spec", {}).get("axes") or ()), figure_format)


def write_bench_outputs(out: Path, title: str, runs: Sequence[BenchRun],
                        notes: Sequence[str] = (), axes: Sequence[str] = (),
                        figure_format: str = "png") -> list[Path]:
    metrics = {r.run_dir: metrics_of(out / r.run_dir)[0] for r in runs
               if r.status == "completed" and r.run_dir}
    rows = bench_rows(runs, metrics)
    csv_path = write_results_csv(rows, out / "results.csv", axes)
    summary_path = write_csv(summary_rows(aggregate(rows)), summary_columns(axes),
                             out / "summary.csv")
    plots = bench_plots(out, runs, metrics, figure_format)
    md = out / "report.md"
    md.write_text(bench_markdown(title, rows, plots, notes))
    return [csv_path, summary_path, md, *(p for p, _ in plots)]


def bench_plots(out: Path, runs: Sequence[BenchRun], metrics: dict,
                figure_format: str = "png") -> list[tuple[Path, str]]:
    """Every plot of the sweep in `figure_format` (png, svg, pdf), with its caption (see the
    module docstring): per setting and model (the setting's label in the file name and
    title, when it has one)."""
    done = [(r.combination, r.run_dir, metrics[r.run_dir]) for r in runs if r.run_dir in metrics]
    made: list[tuple[Path | None, str]] = []
    for setting, model in dict.fromkeys((c.setting.label, c.model) for c, _, _ in done):
        mine = [(c, d, m) for c, d, m in done if (c.setting.label, c.model) == (setting, model)]
        made += _setting_plots(out, mine, f"{setting}: {model}" if setting else model,
                               f"{model}_{slug(setting)}" if setting else model,
                               figure_format)
    return [(p, caption) for p, caption in made if p is not None]


def _setting_plots(out: Path, mine: list[tuple], name: str, stem: str,
                   figure_format: str) -> list[tuple[Path | None, str]]:
    from edgectl.runs import plots
    from edgectl.runs.records import read_events

    def at(figure: str) -> Path:
        return out / figure_name(f"{figure}_{stem}", figure_format)

    made: list[tuple[Path | None, str]] = []
    bandwidths = list(dict.fromkeys(c.bandwidth for c, _, _ in mine))
    pooled: dict[tuple, list] = defaultdict(list)
    idle: dict[tuple, list] = defaultdict(list)
    for c, _, m in mine:
        pooled[(c.strategy, c.bandwidth)].extend(m.round_s)
        idle[(c.bandwidth.label, c.strategy)].append(m.idle)
    points = defaultdict(list)
    for (strategy, bw), values in pooled.items():
        if values:
            points[strategy].append((bw.label, bw.rate_bps, statistics.median(values),
                                     min(values), max(values)))
    made.append((plots.plot_round_time_vs_bandwidth(
        dict(points), at("round_time_vs_bandwidth"),
        f"{name}: round time against link bandwidth"),
        f"{name}: median round time (bars min-max) per strategy against each device's "
        "link bandwidth; unshaped at the right"))
    made.append((plots.plot_idle_by_resource(
        _mean_idle(idle), at("idle_by_resource"),
        f"{name}: idle share of each resource"),
        f"{name}: idle fraction of each resource per strategy, one panel per bandwidth"))
    first: dict[tuple, tuple] = {}  # (strategy, bandwidth) -> its first repeat
    for c, d, m in mine:
        first.setdefault((c.strategy, c.bandwidth), (d, m))
    curves, styles = {}, {}
    for (strategy, bw), (_, m) in first.items():
        label = f"{strategy} {bw.label}"
        curves[label] = list(m.accuracy_curve)
        styles[label] = (plots.STRATEGY_COLORS.get(strategy),
                         ("-", "--", ":", "-.")[bandwidths.index(bw) % 4])
    made.append((plots.plot_accuracy_vs_time(
        curves, at("accuracy_vs_time"),
        f"{name}: test accuracy against wall time", styles),
        f"{name}: test accuracy after each round against wall time, per strategy and "
        "bandwidth (first repeat)"))
    for bw in bandwidths:
        panels = [(s, read_events(out / d)) for (s, b), (d, _) in first.items() if b == bw]
        made.append((plots.plot_timelines(
            panels, out / figure_name(f"timeline_{stem}_{bw.slug}", figure_format),
            f"{name}, {bw.label}: one iteration per strategy"),
            f"{name}, {bw.label}: the spans of one iteration per strategy, one lane per "
            "device and resource, on one time axis: gaps are idle time"))
    return made


def _mean_idle(idle: dict[tuple, list]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (label, strategy), per_run in idle.items():
        resources = {r for fractions in per_run for r in fractions}
        out[label][strategy] = {r: statistics.fmean(f[r] for f in per_run if r in f)
                                for r in resources}
    return dict(out)


def render_report(path: str | os.PathLike, figure_format: str = "png") -> list[Path]:
    """`edgectl report PATH`: given a bench folder (with bench.json) its outputs again,
    given a run record its report.md and plots; the files written."""
    if is_bench_folder(path):
        return rewrite_bench_outputs(path, figure_format)
    return render_run_report(path, figure_format)


def is_bench_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "bench.json").is_file()
