"""How configuration errors show a YAML value: on one line, short, strings quoted."""

from __future__ import annotations

import json
from collections.abc import Mapping


def show_value(value: object) -> str:
    """A value for a message, on one line: strings quoted, collections named."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = json.dumps(value) if value is None or isinstance(value, str | bool) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
