"""`edgectl runs` and `runs compare`: the run records in a folder, and runs side by side.

Never imports torch (edgectl.runs.catalog reads only the records' JSON), so it answers
at once.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgectl.cli.common import FORMAT_OPTION, check_format, emit_json, errors_to_exit, human, out

RUNS_DIR_HELP = "Folder of run records (or a bench output folder); default runs."


@errors_to_exit
def runs_list(ctx: typer.Context,
              runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
              fmt: str = FORMAT_OPTION) -> None:
    """List the run records: strategy, model, status, rounds, accuracy, iteration time."""
    ctx.obj = {"runs_dir": runs_dir}   # `runs --runs-dir X compare ...` uses it too
    if ctx.invoked_subcommand is not None:
        return
    from edgectl.cli.record_views import runs_table
    from edgectl.runs.catalog import list_runs, runs_folder

    check_format(fmt)
    entries = list_runs(runs_dir)
    if fmt == "json":
        emit_json({"runs_dir": str(runs_folder(runs_dir)), "runs": entries})
    elif entries:
        print_whole(runs_table(entries, str(runs_folder(runs_dir))))
    if not entries:
        human(fmt).print(f"no run records in {runs_folder(runs_dir)} (edgectl train writes "
                         "them there; --runs-dir names another folder)", soft_wrap=True)


@errors_to_exit
def runs_compare(ctx: typer.Context,
                 refs: list[str] = typer.Argument(..., metavar="RUN",
                                                  help="Run record folders, or run ids under "
                                                  "--runs-dir (a unique start will do)."),
                 runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
                 fmt: str = FORMAT_OPTION) -> None:
    """Runs side by side: the config that differs, then the results.

    Config: strategy, model and every key whose value is not the same in all the runs.
    Results: iteration time, training time, accuracy, MB up and down, server idle."""
    from edgectl.cli.record_views import comparison_table
    from edgectl.runs.catalog import compare_runs, find_run

    check_format(fmt)
    folder = runs_dir or (ctx.obj or {}).get("runs_dir") or Path("runs")
    records = compare_runs([find_run(ref, folder) for ref in refs])
    if fmt == "json":
        emit_json({"runs": records})
        return
    print_whole(comparison_table(records))


def print_whole(table) -> None:
    """A table on stdout; into a pipe or file as wide as its rows, never cut at 80
    columns (a terminal keeps its own width)."""
    if out.is_terminal:
        out.print(table)
        return
    width = out.width
    out.width = max(width, out.measure(table, options=out.options.update(
        max_width=10_000)).maximum)
    try:
        out.print(table)
    finally:
        out.width = width
