"""`edgectl bench` and `edgectl report`: sweeps of runs, and reports of runs and sweeps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from edgectl.cli.common import (
    FORMAT_OPTION,
    check_format,
    emit_json,
    err,
    errors_to_exit,
    human,
    out,
)


@errors_to_exit
def bench(spec_file: Path = typer.Argument(..., help="A bench spec (see bench/example.yaml)."),
          out_dir: Path = typer.Option(None, "--out", help="Output folder; default "
                                       "bench-results/NAME-TIME."),
          fmt: str = FORMAT_OPTION) -> None:
    """Run a sweep (settings x strategies x models x bandwidths x repeats): results.csv,
    summary.csv, report.md, plots."""
    from edgectl.runs.bench import default_out_dir, progress_bar, run_bench
    from edgectl.runs.bench_spec_parse import load_bench_spec

    say = human(fmt)
    spec = load_bench_spec(spec_file)
    target = out_dir or default_out_dir(spec)
    with progress_bar(say) as on_progress:
        result = run_bench(spec, target, on_progress)
    for run in result.failed:
        err.print(Text(f"failed: {run.combination.label}: {run.error}", style="red"),
                  soft_wrap=True)
    if fmt == "json":
        emit_json({"out_dir": str(result.out_dir), "files": [str(f) for f in result.files],
                   "runs": [r.to_json() for r in result.runs]})
    say.print(f"report: {Path(result.out_dir) / 'report.md'}")


@errors_to_exit
def report(run_dir: Path = typer.Argument(..., help="A run record (runs/<id>) or a bench "
                                          "output folder."),
           fmt: str = FORMAT_OPTION) -> None:
    """Render a run's summary as report.md and plots (timeline, accuracy, busy/idle)."""
    from edgectl.runs.sweep_report import render_report

    check_format(fmt)
    made = render_report(run_dir)
    if fmt == "json":
        emit_json({"files": [str(path) for path in made]})
        return
    for path in made:
        out.print(str(path))
