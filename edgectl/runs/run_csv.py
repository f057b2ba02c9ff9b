"""One run's figures as CSV files, for a spreadsheet, pandas or R: `edgectl report RUN --csv`.

    rounds.csv     per round: wall, training and evaluation time, loss, test loss,
                   accuracy in %, samples, mini-batches per device, iteration time and
                   the bytes each direction carried in that round
    resources.csv  per host and resource: busy, idle, utilization (0-1), bytes

Both come from the run's summary (summary.json, or recomputed from the events when it is
missing, edgectl.runs.report.load_summary) and its events; nothing is measured again. A
round that was not evaluated (--eval-every) has empty test_loss and accuracy_pct.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgectl.errors import UsageError
from edgectl.runs.report import load_summary, read_run
from edgectl.runs.summary import Summary

ROUND_COLUMNS = ("round", "wall_s", "train_s", "eval_s", "loss", "test_loss", "accuracy_pct",
                 "samples", "batches", "iteration_ms", "bytes_up", "bytes_down")
RESOURCE_COLUMNS = ("host", "resource", "busy_s", "idle_s", "utilization", "bytes")


@dataclass(frozen=True)
class RunCsvs:
    rounds: Path
    resources: Path


def write_run_csvs(run_dir: str | Path) -> RunCsvs:
    """rounds.csv and resources.csv in the run record at `run_dir`."""
    path = Path(run_dir)
    if (path / "bench.json").is_file():
        raise UsageError(f"{path} is a bench folder, whose results.csv and summary.csv "
                         "hold its runs already; for one run's CSVs pass one of its runs: "
                         f"{path / 'runs' / '<run-id>'}")
    _, events = read_run(path)
    summary = load_summary(path, events)
    return RunCsvs(_write(path / "rounds.csv", ROUND_COLUMNS, round_rows(summary, events)),
                   _write(path / "resources.csv", RESOURCE_COLUMNS, resource_rows(summary)))


def round_rows(summary: Summary, events: Sequence[dict]) -> list[dict]:
    batches: dict[int, int] = defaultdict(int)
    moved: dict[tuple[int, str], int] = defaultdict(int)
    for e in events:
        if e.get("type") == "progress":
            batches[e["round"]] = max(batches[e["round"]], e["batches"])
        elif e.get("type") == "span" and e.get("what") != "eval" \
                and e.get("resource") in ("uplink", "downlink"):
            moved[(e["round"], e["resource"])] += int(e.get("bytes", 0))
    return [{"round": r.round, "wall_s": r.wall_s, "train_s": r.train_s, "eval_s": r.eval_s,
             "loss": r.loss, "test_loss": r.test_loss,
             "accuracy_pct": None if r.accuracy is None else r.accuracy * 100,
             "samples": r.samples, "batches": batches.get(r.round) or None,
             "iteration_ms": r.train_s / batches[r.round] * 1e3 if batches.get(r.round)
             else None,
             "bytes_up": moved[(r.round, "uplink")], "bytes_down": moved[(r.round, "downlink")]}
            for r in summary.rounds]


def resource_rows(summary: Summary) -> list[dict]:
    return [{"host": r.host, "resource": r.resource, "busy_s": r.busy_s, "idle_s": r.idle_s,
             "utilization": r.utilization, "bytes": r.bytes} for r in summary.resources]


def _write(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row[k]) for k in columns})
    return path


def _cell(value: object) -> object:
    """Empty for a missing figure; floats to 10 significant digits, without binary noise
    such as 0.30000000000000004."""
    if value is None:
        return ""
    return f"{value:.10g}" if isinstance(value, float) else value
