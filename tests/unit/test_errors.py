"""Every exit code edgectl uses is documented in the README, with the same meaning."""

from __future__ import annotations

import re
from pathlib import Path

from agents.errors import AgentError, DatasetError
from edgectl import errors
from partitions.errors import PartitionError

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_codes() -> dict[int, str]:
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", README.read_text(), flags=re.M)
    return {int(code): meaning for code, meaning in rows}


def test_every_exit_code_is_documented_with_its_meaning():
    assert documented_codes() == errors.EXIT_CODES


def test_every_exit_constant_is_in_the_table():
    constants = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert constants == set(errors.EXIT_CODES)


def test_error_classes_map_to_documented_codes():
    for cls in (errors.UsageError, errors.ConfigError, errors.DataError, errors.FleetError,
                errors.RunFailed):
        assert errors.exit_code_for(cls("x")) in errors.EXIT_CODES
    assert errors.exit_code_for(DatasetError("x")) == errors.EXIT_DATA
    assert errors.exit_code_for(PartitionError("x")) == errors.EXIT_USAGE
    assert errors.exit_code_for(AgentError("x")) == errors.EXIT_USAGE
    assert errors.exit_code_for(KeyError("bug")) is None
