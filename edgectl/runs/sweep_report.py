"""The outputs of a sweep: results.csv, report.md and plots, computed from its run records.

`bench_rows` turns the sweep's runs (their `RunMetrics`, edgectl/runs/report.py, whose
Note defines round time, speedup and idle fractions) into one row per run with the
speedups between runs; `write_results_csv` and `bench_markdown` render them, `bench_plots`
draws the figures. `write_bench_outputs` writes all of it into a bench folder and
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

from edgectl.runs.bench_spec import BenchRun
from edgectl.runs.report import RunMetrics, metrics_of, render_run_report

CSV_COLUMNS = ("strategy", "model", "bandwidth", "up", "down", "repeat", "status", "error",
               "run_dir", "rounds", "batches_per_round", "iteration_s_median",
               "iteration_s_min", "iteration_s_max", "round_s_median", "round_s_min",
               "round_s_max", "speedup_over_fl", "speedup_over_split", "server_idle_fraction",
               "device_idle_fraction", "bytes_up_per_round", "bytes_down_per_round",
               "final_accuracy")


def bench_rows(runs: Sequence[BenchRun], metrics: dict[str, RunMetrics]) -> list[dict]:
    """One row per run (CSV_COLUMNS), metrics keyed by run_dir (completed runs only)."""
    pooled: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        m = metrics.get(run.run_dir or "")
        if m:
            c = run.combination
            pooled[(c.strategy, c.model, c.bandwidth.label)].extend(m.round_s)
    rows = []
    for run in runs:
        c, m = run.combination, metrics.get(run.run_dir or "")
        row = {"strategy": c.strategy, "model": c.model, "bandwidth": c.bandwidth.label,
               "up": c.bandwidth.up, "down": c.bandwidth.down, "repeat": c.repeat,
               "status": run.status, "error": run.error, "run_dir": run.run_dir}
        if m:
            row.update(_metric_columns(m))
            for base in ("fl", "split"):
                baseline = pooled.get((base, c.model, c.bandwidth.label))
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
            "final_accuracy": m.final_accuracy}


def write_results_csv(rows: Sequence[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    return path


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def _spread(row: dict, name: str, scale: float, fmt: str) -> str:
    if row.get(f"{name}_median") is None:
        return "-"
    lo, mid, hi = (row[f"{name}_{k}"] * scale for k in ("min", "median", "max"))
    return f"{mid:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def _num(value: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{fmt}}{suffix}"


def bench_markdown(title: str, rows: Sequence[dict], plots: Sequence[tuple[Path, str]],
                   notes: Sequence[str] = ()) -> str:
    lines = [f"# Bench {title}", "", *notes, "",
             "Round time = training time of a round (weights down, every mini-batch, weights "
             "up; evaluation excluded); iteration = round time / mini-batches. Times are "
             "median (min-max) over the run's rounds; speedups compare median round times "
             "for the same model and bandwidth. Idle = share of the training time the "
             "server's compute, or a device's compute (mean over devices), did nothing."]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["bandwidth"])].append(row)
    for (model, bandwidth), group in groups.items():
        lines += ["", f"## {model}, {bandwidth}", "",
                  "| strategy | repeat | status | iteration ms | round s | vs fl | vs split | "
                  "server idle | device idle | MB up/round | MB down/round | accuracy |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: |"]
        for r in group:
            lines.append(
                f"| {r['strategy']} | {r['repeat']} | {r['status']} | "
                f"{_spread(r, 'iteration_s', 1e3, '.1f')} | {_spread(r, 'round_s', 1, '.2f')} "
                f"| {_num(r.get('speedup_over_fl'), '.2f', suffix='x')} "
                f"| {_num(r.get('speedup_over_split'), '.2f', suffix='x')} "
                f"| {_num(r.get('server_idle_fraction'), '.0f', 100, '%')} "
                f"| {_num(r.get('device_idle_fraction'), '.0f', 100, '%')} "
                f"| {_num(r.get('bytes_up_per_round'), '.2f', 1e-6)} "
                f"| {_num(r.get('bytes_down_per_round'), '.2f', 1e-6)} "
                f"| {_num(r.get('final_accuracy'), '.1f', 100, '%')} |")
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['strategy']} {r['model']} {r['bandwidth']} #{r['repeat']}: "
                  f"{r['error']}" for r in failed]
    lines += ["", "## Plots", ""]
    lines += [f"- `{path.name}`: {caption}" for path, caption in plots]
    return "\n".join(lines) + "\n"


def rewrite_bench_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """results.csv, report.md and the plots of a bench folder, again from its records."""
    out = Path(out_dir)
    data = json.loads((out / "bench.json").read_text())
    runs = [BenchRun.from_json(r) for r in data["runs"]]
    return write_bench_outputs(out, data["name"], runs, data.get("notes", []))


def write_bench_outputs(out: Path, title: str, runs: Sequence[BenchRun],
                        notes: Sequence[str] = ()) -> list[Path]:
    metrics = {r.run_dir: metrics_of(out / r.run_dir)[0] for r in runs
               if r.status == "completed" and r.run_dir}
    rows = bench_rows(runs, metrics)
    csv_path = write_results_csv(rows, out / "results.csv")
    plots = bench_plots(out, runs, metrics)
    md = out / "report.md"
    md.write_text(bench_markdown(title, rows, plots, notes))
    return [csv_path, md, *(p for p, _ in plots)]


def bench_plots(out: Path, runs: Sequence[BenchRun], metrics: dict) -> list[tuple[Path, str]]:
    """Every plot of the sweep, with its caption (see the module docstring)."""
    from edgectl.runs import plots
    from edgectl.runs.records import read_events

    done = [(r.combination, r.run_dir, metrics[r.run_dir]) for r in runs if r.run_dir in metrics]
    made: list[tuple[Path | None, str]] = []
    for model in dict.fromkeys(c.model for c, _, _ in done):
        mine = [(c, d, m) for c, d, m in done if c.model == model]
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
            dict(points), out / f"round_time_vs_bandwidth_{model}.png",
            f"{model}: round time against link bandwidth"),
            f"{model}: median round time (bars min-max) per strategy against each device's "
            "link bandwidth; unshaped at the right"))
        made.append((plots.plot_idle_by_resource(
            _mean_idle(idle), out / f"idle_by_resource_{model}.png",
            f"{model}: idle share of each resource"),
            f"{model}: idle fraction of each resource per strategy, one panel per bandwidth"))
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
            curves, out / f"accuracy_vs_time_{model}.png",
            f"{model}: test accuracy against wall time", styles),
            f"{model}: test accuracy after each round against wall time, per strategy and "
            "bandwidth (first repeat)"))
        for bw in bandwidths:
            panels = [(s, read_events(out / d)) for (s, b), (d, _) in first.items() if b == bw]
            made.append((plots.plot_timelines(
                panels, out / f"timeline_{model}_{bw.slug}.png",
                f"{model}, {bw.label}: one iteration per strategy"),
                f"{model}, {bw.label}: the spans of one iteration per strategy, one lane per "
                "device and resource, on one time axis: gaps are idle time"))
    return [(p, caption) for p, caption in made if p is not None]


def _mean_idle(idle: dict[tuple, list]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (label, strategy), per_run in idle.items():
        resources = {r for fractions in per_run for r in fractions}
        out[label][strategy] = {r: statistics.fmean(f[r] for f in per_run if r in f)
                                for r in resources}
    return dict(out)


def render_report(path: str | os.PathLike) -> list[Path]:
    """`edgectl report PATH`: given a bench folder (with bench.json) its outputs again,
    given a run record its report.md and plots; the files written."""
    if (Path(path) / "bench.json").is_file():
        return rewrite_bench_outputs(path)
    return render_run_report(path)
