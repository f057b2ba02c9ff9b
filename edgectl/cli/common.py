"""What every command module shares: the consoles, the error boundary, common options.

`errors_to_exit` is the one error boundary: a user-caused error becomes a single
`error: ...` line on stderr and the exit code documented in README.md
(edgectl.errors.EXIT_CODES); only a real bug shows a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from edgectl.errors import EXIT_CLOSED_PIPE, EXIT_FLEET, EXIT_INTERRUPTED, UsageError, exit_code_for

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
FORMAT_OPTION = typer.Option("table", "--format", help="table or json.")
FIGURE_FORMAT_OPTION = typer.Option("png", "--figure-format",
                                    help="png, svg or pdf: the file format of the figures.")


class _Console(Console):
    """rich's Console, except that a closed pipe (`edgectl ... | head`) silences it instead
    of exiting with 1 mid-command: a run goes on to its end, its record complete, and the
    command then exits with EXIT_CLOSED_PIPE."""

    pipe_closed = False

    def on_broken_pipe(self) -> None:
        self.quiet = self.pipe_closed = True
        _silence_stdout()


out = _Console(highlight=False)
err = Console(stderr=True, highlight=False)


def errors_to_exit(command):
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()   # a closed pipe that rich did not see shows here
            if out.pipe_closed:
                raise typer.Exit(EXIT_CLOSED_PIPE)
            return result
        except KeyboardInterrupt:
            err.print(Text("interrupted: every agent was stopped", style="yellow"))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:   # `edgectl ... | head`: the reader is gone, not a bug
            _silence_stdout()
            raise typer.Exit(EXIT_CLOSED_PIPE) from None
        except Exception as e:
            code = exit_code_for(e)
            if code is None:
                raise
            err.print(Text(f"error: {e}", style="red"), soft_wrap=True)
            raise typer.Exit(code) from None
    return run


class ProgressLines:
    """Profiling's progress (edgectl.planning.progress.Progress) as lines on stderr: each
    host's, run's or note's first news and its last, and between them one line at most
    every `every_s` seconds."""

    def __init__(self, console: Console = err, every_s: float = 5.0):
        self.console, self.every_s = console, every_s
        self.shown: tuple = ()
        self.shown_at = 0.0

    def __call__(self, progress) -> None:
        now = time.monotonic()
        key = (progress.step, progress.host, progress.part, progress.note)
        finished = progress.total and progress.done >= progress.total
        if key != self.shown or finished or now - self.shown_at >= self.every_s:
            self.console.print(progress.describe(), style="dim", soft_wrap=True)
            self.shown, self.shown_at = key, now


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def human(fmt: str):
    """Where human text goes: stdout, or stderr when stdout carries --format json."""
    return err if check_format(fmt) == "json" else out


def emit_json(data: object) -> None:
    """JSON on stdout: dataclasses as objects, paths as strings, mappings as objects."""
    out.print_json(json.dumps(data, default=_plain))


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def results_json(results) -> list[dict]:
    """Per-host results (fleet.hosts.HostResult) as JSON objects."""
    return [{"host": r.host.name, "role": r.host.role, "ok": r.ok, "error": r.error,
             "result": r.value if r.ok else None} for r in results]


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format {fmt!r} is unknown; choose table or json")
    return fmt


def selected(inventory: Path | None, hosts: str | None):
    from edgectl.fleet.inventory import load_inventory
    fleet = load_inventory(inventory)
    return fleet.select([h for h in hosts.split(",") if h]) if hosts else fleet


def exit_on_failures(results) -> None:
    failed = [r for r in results if not r.ok]
    for r in failed:
        err.print(Text(f"error: {r.error}", style="red"), soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_FLEET)
