"""Reading configuration YAML, and showing its values in one-line errors."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from edgectl.errors import ConfigError


def show_value(value: object) -> str:
    """A value for a message, on one line: strings quoted, collections named."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = json.dumps(value) if value is None or isinstance(value, str | bool) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_yaml(path: str | os.PathLike, missing_hint: str) -> object:
    """The data in a YAML file (safe_load), or a one-line ConfigError naming the file and,
    for YAML errors, the line; `missing_hint` says what to pass instead of a missing file."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: not found; {missing_hint}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc) or "unreadable"
        raise ConfigError(f"{source}: {line}not valid YAML: {' '.join(problem.split())}") from None
