"""Validating a run record against the JSON Schemas the package ships (edgectl/runs/schemas)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

FILES = ("run", "events", "rounds", "summary")


def schemas() -> dict[str, dict]:
    folder = resources.files("edgectl.runs") / "schemas"
    return {name: json.loads((folder / f"{name}.schema.json").read_text()) for name in FILES}


def validators() -> dict[str, Draft202012Validator]:
    loaded = schemas()
    registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in loaded.values())
    return {name: Draft202012Validator(s, registry=registry) for name, s in loaded.items()}


def record_errors(run_dir: str | Path) -> list[str]:
    """Every way the record at run_dir breaks its schemas, as "file[line]: path: message"."""
    run_dir, check = Path(run_dir), validators()
    errors = []

    def validate(name: str, where: str, instance: object) -> None:
        errors.extend(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in check[name].iter_errors(instance))

    validate("run", "run.json", json.loads((run_dir / "run.json").read_text()))
    validate("summary", "summary.json", json.loads((run_dir / "summary.json").read_text()))
    for name, file in (("events", "events.jsonl"), ("rounds", "rounds.jsonl")):
        for i, line in enumerate((run_dir / file).read_text().splitlines()):
            validate(name, f"{file}[{i}]", json.loads(line))
    return errors
