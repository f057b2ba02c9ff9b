"""`edgectl bench` and `edgectl report`: sweeps of runs, and reports of runs and sweeps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from edgectl.cli.common import err, errors_to_exit, out


@errors_to_exit
def bench(spec_file: Path = typer.Argument(..., help="A bench spec (see bench/example.yaml)."),
          out_dir: Path = typer.Option(None, "--out", help="Output folder; default "
                                       "bench-results/NAME-TIME.")) -> None:
    """Run a sweep (strategies x models x bandwidths x repeats): results.csv, report.md,
    plots."""
    from edgectl.runs.bench import default_out_dir, progress_bar, run_bench
    from edgectl.runs.bench_spec_parse import load_bench_spec

    spec = load_bench_spec(spec_file)
    target = out_dir or default_out_dir(spec)
    with progress_bar(out) as on_progress:
        result = run_bench(spec, target, on_progress)
    for run in result.failed:
        err.print(Text(f"failed: {run.combination.label}: {run.error}", style="red"),
                  soft_wrap=True)
    out.print(f"report: {Path(result.out_dir) / 'report.md'}")


@errors_to_exit
def report(run_dir: Path = typer.Argument(..., help="A run record (runs/<id>) or a bench "
                                          "output folder.")) -> None:
    """Render a run's summary as report.md and plots (timeline, accuracy, busy/idle)."""
    from edgectl.runs.sweep_report import render_report

    for path in render_report(run_dir):
        out.print(str(path))
