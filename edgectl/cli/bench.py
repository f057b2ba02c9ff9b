"""`edgectl bench` and `edgectl report`: sweeps of runs, and reports of runs and sweeps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from edgectl.cli.common import (
    FIGURE_FORMAT_OPTION,
    FORMAT_OPTION,
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
          fmt: str = FORMAT_OPTION, figure_format: str = FIGURE_FORMAT_OPTION) -> None:
    """Run a sweep (settings x strategies x models x bandwidths x repeats) into one folder."""
    from edgectl.runs.bench import default_out_dir, progress_bar, run_bench
    from edgectl.runs.bench_spec_parse import load_bench_spec
    from edgectl.runs.figures import check_figure_format

    say = human(fmt)
    check_figure_format(figure_format)
    spec = load_bench_spec(spec_file)
    target = out_dir or default_out_dir(spec)
    with progress_bar(say) as on_progress:
        result = run_bench(spec, target, on_progress, figure_format)
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
           fmt: str = FORMAT_OPTION, figure_format: str = FIGURE_FORMAT_OPTION,
           csv: bool = typer.Option(False, "--csv", help="Also write rounds.csv and "
                                    "resources.csv (per round, per resource) into the run "
                                    "record.")) -> None:
    """Render a run's summary as report.md and plots (timeline, accuracy, busy/idle)."""
    from edgectl.runs.figures import check_figure_format
    from edgectl.runs.run_csv import write_run_csvs
    from edgectl.runs.sweep_report import render_report

    say = human(fmt)
    check_figure_format(figure_format)
    tables = write_run_csvs(run_dir) if csv else None
    made = render_report(run_dir, figure_format)
    if fmt == "json":
        emit_json({"files": [str(path) for path in made],
                   "csv": {"rounds": tables.rounds, "resources": tables.resources}
                   if tables else None})
    else:
        for path in made:
            out.print(str(path))
    if tables:
        say.print(f"csv: {tables.rounds} (per round), {tables.resources} (per resource)",
                  soft_wrap=True)
