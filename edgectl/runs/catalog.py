"""The run records in a folder, listed and compared: `edgectl runs` and `edgectl runs compare`.

Reads only run.json, summary.json and rounds.jsonl (never events.jsonl, which can be
large, and never torch), so listing a folder of many runs is quick. A folder without a
run.json is not a run record and is skipped; a run.json that does not parse is listed with
status "unreadable" rather than stopping the listing. Given a bench folder (bench.json
beside runs/), its runs/ is listed.

Note: a run's figures here are the ones its summary holds (edgectl/runs/summary.py):
iteration time = training time over the mini-batches of all rounds, server idle =
training time minus the server compute's busy time, final accuracy = the last evaluated
round's. A run that is still going or crashed has no summary.json yet: its training time
is then the sum of its finished rounds' and the rest is unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgectl.errors import ConfigError, UsageError
from edgectl.runs.figures import link_text
from edgectl.runs.report import placement_text

# what a comparison leaves out of the configs: the run id is its column, the rest says
# nothing about the experiment (paced follows from adapt and the schedule)
_NOT_COMPARED = ("run_id", "devices", "paced")


@dataclass(frozen=True)
class RunEntry:
    """One line of `edgectl runs`."""

    id: str
    path: str
    status: str                      # run.json's, or "unreadable"
    strategy: str | None = None
    model: str | None = None
    rounds_completed: int = 0
    rounds_planned: int | None = None
    final_accuracy_pct: float | None = None
    iteration_ms: float | None = None
    started: float | None = None     # seconds since the epoch, as run.json has it


@dataclass(frozen=True)
class ComparedRecord:
    """One run of `edgectl runs compare`: its configuration and results (see the Note)."""

    id: str
    path: str
    config: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Record:
    path: Path
    info: dict | None                # None: run.json did not parse
    summary: dict | None
    rounds: list[dict]


def runs_folder(runs_dir: str | Path) -> Path:
    """Where a folder's run records are: itself, or a bench folder's runs/."""
    path = Path(runs_dir)
    return path / "runs" if (path / "bench.json").is_file() else path


def list_runs(runs_dir: str | Path) -> list[RunEntry]:
    """Every run record in `runs_dir`, by run id (which starts with its start time)."""
    folder = runs_folder(runs_dir)
    if not folder.is_dir():
        return []
    records = [_read(p) for p in sorted(folder.iterdir()) if (p / "run.json").is_file()]
    return [_entry(r) for r in records]


def find_run(ref: str, runs_dir: str | Path) -> Path:
    """A run record named by its folder, its run id under `runs_dir` or an unambiguous
    start of its run id; UsageError naming `ref` and how to list the runs otherwise."""
    folder = runs_folder(runs_dir)
    how = f"list them with `edgectl runs --runs-dir {runs_dir}`"
    path = Path(ref)
    if not path.is_dir():
        matches = sorted(p for p in folder.glob(f"{ref}*") if (p / "run.json").is_file()) \
            if folder.is_dir() and "/" not in ref else []
        if len(matches) > 1:
            raise UsageError(f"run {ref!r} is ambiguous: {', '.join(p.name for p in matches)} "
                             "start with it; give more of the run id")
        if not matches:
            raise UsageError(f"run {ref!r} not found: no such folder, nor a run id under "
                             f"{folder}; {how}")
        path = matches[0]
    if not (path / "run.json").is_file():
        raise UsageError(f"{path}: not a run record (no run.json); {how}")
    return path


def compare_runs(paths: list[Path]) -> list[ComparedRecord]:
    """The runs side by side: each one's strategy, model and every config key whose value
    is not the same in all of them; and its results (see the Note)."""
    if len(paths) < 2:
        raise UsageError("runs compare needs two runs or more, e.g. `edgectl runs compare "
                         "RUN_A RUN_B`")
    records = [_read(p) for p in paths]
    for r in records:
        if r.info is None:
            raise ConfigError(f"{r.path / 'run.json'}: does not parse as JSON; this run "
                              "cannot be compared")
    configs = [_config(r) for r in records]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    shown = ["strategy", "model", *(k for k in differing if k not in ("strategy", "model"))]
    return [ComparedRecord(r.path.name, str(r.path), {k: c.get(k) for k in shown},
                           _results(r)) for r, c in zip(records, configs, strict=True)]


def _read(path: Path) -> _Record:
    try:
        info = json.loads((path / "run.json").read_text())
        info = info if isinstance(info, dict) else None
    except (OSError, ValueError):
        info = None
    try:
        summary = json.loads((path / "summary.json").read_text())
        summary = summary if isinstance(summary, dict) else None
    except (OSError, ValueError):
        summary = None
    return _Record(path, info, summary, _read_rounds(path / "rounds.jsonl"))


def _read_rounds(path: Path) -> list[dict]:
    """The round events; a line cut short by a crash (or anything else unparsable) is
    left out."""
    rounds = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("round"), int):
            rounds.append(event)
    return rounds


def _entry(r: _Record) -> RunEntry:
    if r.info is None:
        return RunEntry(r.path.name, str(r.path), "unreadable")
    config = r.info.get("config") or {}
    results = _results(r)
    return RunEntry(str(r.info.get("run_id") or r.path.name), str(r.path),
                    str(r.info.get("status", "?")), config.get("strategy"), config.get("model"),
                    len(r.rounds), config.get("rounds"), results["accuracy_pct"],
                    results["iteration_ms"], r.info.get("started"))


def _results(r: _Record) -> dict:
    summary = r.summary or {}
    accuracies = [e["accuracy"] for e in r.rounds if e.get("accuracy") is not None]
    train_s = summary.get("train_s")
    if train_s is None and r.rounds:
        train_s = sum(e.get("train_s") or 0.0 for e in r.rounds)
    server_busy = sum(x.get("busy_s", 0.0) for x in summary.get("resources") or []
                      if x.get("resource") == "server.compute")
    iteration = summary.get("iteration_s")
    return {"status": (r.info or {}).get("status", "unreadable"),
            "rounds": len(r.rounds),
            "iteration_ms": iteration * 1e3 if iteration else None,
            "train_s": train_s,
            "accuracy_pct": accuracies[-1] * 100 if accuracies else None,
            "bytes_up": sum((summary.get("bytes_up") or {}).values()) if summary else None,
            "bytes_down": sum((summary.get("bytes_down") or {}).values()) if summary else None,
            "server_idle_s": max(train_s - server_busy, 0.0) if summary and train_s is not None
            else None}


def _config(r: _Record) -> dict:
    """What a run was asked to do, flat: the run config's keys, each device's placement
    (and an adaptive run's changes of it), the link setting, whether it adapted, and a
    bench's setting where there is one."""
    info = r.info or {}
    config = info.get("config") or {}
    flat = {k: v for k, v in config.items() if k not in _NOT_COMPARED}
    devices = config.get("devices") or []
    flat["placement"] = placement_text(info.get("placements"), r.rounds) or ", ".join(
        f"{d.get('name')} p={d.get('split_point')} N={d.get('microbatches')}" for d in devices)
    flat["link"] = link_text(info)
    flat["adapt"] = bool((info.get("train_options") or {}).get("adapt"))
    if info.get("bench"):
        flat["bench setting"] = info["bench"].get("setting")
    return flat
