"""Rich renderings of run records: the list of runs, and runs side by side.

Pure presentation of edgectl.runs.catalog's dataclasses, like edgectl.cli.views.
"""

from __future__ import annotations

import time

from rich import box
from rich.table import Table

from edgectl.runs.catalog import ComparedRecord, RunEntry


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def started_text(started: float | None) -> str:
    return "-" if started is None else time.strftime("%Y-%m-%d %H:%M",
                                                     time.localtime(started))


def runs_table(entries: list[RunEntry], folder: str) -> Table:
    """One row per run. Every column but the id keeps its width (a long id folds), so the
    table stays whole in an 80-column terminal or a pipe."""
    rows = [(e.id, e.strategy or "-", e.model or "-", e.status,
             f"{e.rounds_completed}/{'?' if e.rounds_planned is None else e.rounds_planned}",
             _num(e.final_accuracy_pct, ".1f", "%"), _num(e.iteration_ms, ".1f"),
             started_text(e.started)) for e in entries]
    table = Table(title=f"run records in {folder}", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(("id", "strategy", "model", "status", "rounds", "accuracy",
                             "iteration ms", "started")):
        widest = max([len(row[i]) for row in rows] + [max(map(len, col.split()))])
        table.add_column(col, overflow="fold", min_width=None if i == 0 else widest,
                         justify="right" if col in ("rounds", "accuracy", "iteration ms")
                         else "left")
    for row in rows:
        table.add_row(*row)
    return table


_RESULTS = (("status", "status", str), ("rounds", "rounds completed", str),
            ("iteration_ms", "iteration ms", lambda v: f"{v:.1f}"),
            ("train_s", "training time s", lambda v: f"{v:.2f}"),
            ("accuracy_pct", "accuracy", lambda v: f"{v:.1f}%"),
            ("bytes_up", "MB up", lambda v: f"{v / 1e6:.2f}"),
            ("bytes_down", "MB down", lambda v: f"{v / 1e6:.2f}"),
            ("server_idle_s", "server idle s", lambda v: f"{v:.2f}"))


def comparison_table(records: list[ComparedRecord]) -> Table:
    """One column per run; rows: its config (strategy, model and what differs), then its
    results."""
    table = Table(title="runs side by side: config (what differs) and results",
                  box=box.SIMPLE_HEAD, show_lines=False)
    table.add_column("")
    for r in records:
        table.add_column(r.id, overflow="fold")
    for key in records[0].config:
        table.add_row(key, *(_text(r.config.get(key)) for r in records))
    table.add_section()
    for key, label, fmt in _RESULTS:
        table.add_row(label, *("-" if r.results.get(key) is None else fmt(r.results[key])
                               for r in records))
    return table


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
