"""Run records: `runs/<run-id>/`, written as the run goes so a crash loses at most one event.

    run.json       schema_version, command, config (what every agent ran), train_config (the
                   options as resolved: `edgectl train --config run.json` repeats the run),
                   versions, inventory digest, status ("running", "completed", "failed",
                   "interrupted"), error, start and end times, and per host the dataset
                   files it read with their sha256 (from the agents' ready events); under
                   --dp, `privacy`: the accountant's latest epsilon with the sample rate and
                   steps per device it came from
    events.jsonl   every metric event of every agent, one JSON object a line
    rounds.jsonl   the round results alone (loss, accuracy, samples, times; epsilon under --dp)
    summary.json   per-round and per-resource figures computed from the events
    model.safetensors  the final global model, when the server could write it here
    checkpoint.safetensors  the global model after the last completed round, with what it
                   takes to continue (agents.checkpoint): `edgectl train --resume RUN_DIR`

A resumed run appends to the same files: a "resumed" event marks where, and the events of
rounds from its `from_round` on that were written before it (the interrupted attempt's
unfinished round) are superseded; `read_events` leaves them out, rounds.jsonl drops them.

run.json is replaced atomically (write a temporary file, then rename), so a reader never
sees half of it. The JSON Schemas of all four are in edgectl/runs/schemas/; a change that a
reader of an older record would misread bumps RECORD_SCHEMA_VERSION.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import secrets
import socket
import time
from pathlib import Path

from edgectl import __version__
from edgectl.errors import ConfigError

RECORD_SCHEMA_VERSION = 1   # run.json's (and so the record's); see edgectl/runs/schemas/


def new_run_id(strategy: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{strategy}-{secrets.token_hex(2)}"


def versions() -> dict:
    return {"edgectl": __version__, "python": platform.python_version(),
            "torch": importlib.metadata.version("torch"), "platform": platform.platform()}


def coordinator_record() -> dict:
    """Who is driving the run: `--resume` refuses a run whose coordinator still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class RunRecord:
    def __init__(self, runs_dir: str | os.PathLike, run_id: str, info: dict):
        self.dir = Path(runs_dir) / run_id
        try:
            self.dir.mkdir(parents=True, exist_ok=False)
        except OSError as e:
            raise ConfigError(f"cannot create run directory {self.dir}: {e.strerror}; "
                              "pass --runs-dir with a writable folder") from e
        self.info = {"schema_version": RECORD_SCHEMA_VERSION, "run_id": run_id,
                     "status": "running", "started": time.time(), "ended": None, "error": None,
                     "versions": versions(), "datasets": {},
                     "coordinator": coordinator_record(), **info}
        _write_json_atomic(self.dir / "run.json", self.info)
        self._open()

    def _open(self) -> None:
        self._events = open(self.dir / "events.jsonl", "a", buffering=1)  # noqa: SIM115
        self._rounds = open(self.dir / "rounds.jsonl", "a", buffering=1)  # noqa: SIM115

    @classmethod
    def reopen(cls, run_dir: str | os.PathLike, info: dict) -> RunRecord:
        """The record of a run being resumed (`info`: its run.json), to append to."""
        record = cls.__new__(cls)
        record.dir, record.info = Path(run_dir), info
        record._open()
        return record

    def resume_from(self, from_round: int, checkpoint_round: int,
                    checkpoint_round_event: dict) -> None:
        """Mark a resume: rounds.jsonl keeps rounds before `from_round` (with the
        checkpoint's round event put back when the interrupted attempt never logged it),
        and a "resumed" event supersedes what the attempt wrote of later rounds."""
        rounds_path = self.dir / "rounds.jsonl"
        kept = [e for e in _read_jsonl(rounds_path) if e.get("round", 0) < from_round]
        if checkpoint_round not in {e.get("round") for e in kept}:
            kept.append(checkpoint_round_event)
            self._events.write(json.dumps(checkpoint_round_event, separators=(",", ":")) + "\n")
        self._rounds.close()
        tmp = rounds_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n"
                               for e in sorted(kept, key=lambda e: e["round"])))
        os.replace(tmp, rounds_path)
        self._rounds = open(rounds_path, "a", buffering=1)  # noqa: SIM115
        resumes = [*self.info.get("resumes", []), {"time": time.time(), "from_round": from_round,
                                                   "checkpoint_round": checkpoint_round}]
        self.update(status="running", ended=None, error=None, resumes=resumes,
                    coordinator=coordinator_record())
        self.append({"type": "resumed", "host": "coordinator", "time": time.time(),
                     "from_round": from_round, "checkpoint_round": checkpoint_round})

    @property
    def model_path(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.safetensors"

    def append(self, event: dict) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        self._events.write(line)
        if event.get("type") == "round":
            self._rounds.write(line)
            if event.get("privacy"):   # a --dp run: the sampling rate and steps behind epsilon
                self.update(privacy=event["privacy"])
        if event.get("type") == "ready" and event.get("dataset"):   # which bytes it read
            self.update(datasets={**self.info["datasets"], event["host"]: event["dataset"]})

    def update(self, **fields: object) -> None:
        self.info.update(fields)
        _write_json_atomic(self.dir / "run.json", self.info)

    def finish(self, status: str, *, error: str | None = None,
               summary: dict | None = None) -> None:
        self._events.close()
        self._rounds.close()
        if summary is not None:
            _write_json_atomic(self.dir / "summary.json", summary)
        self.update(status=status, error=error, ended=time.time())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    """The run's events, less those a resume superseded (see the module docstring)."""
    return effective_events(_read_jsonl(Path(run_dir) / "events.jsonl"))


def effective_events(events: list[dict]) -> list[dict]:
    """`events` without what each "resumed" event supersedes: the events of rounds from its
    from_round on that came before it."""
    out: list[dict] = []
    for event in events:
        if event.get("type") == "resumed":
            first = event["from_round"]
            out = [e for e in out if not isinstance(e.get("round"), int) or e["round"] < first
                   or e.get("type") == "resumed"]
        out.append(event)
    return out
