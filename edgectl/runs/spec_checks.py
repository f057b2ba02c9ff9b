"""Checking the values of a bench spec, one YAML path at a time.

`SpecChecker` validates a value found at a path of one file and returns it normalized, or
raises a one-line ConfigError naming the file, the path, the bad value and what is allowed
(`spec.yaml: testbed.cpu[1]: expected a number of CPU cores >= 0.01 like 0.25, got "x"`).
edgectl/runs/bench_spec_parse.py and bench_axes.py use it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping

from edgectl.errors import ConfigError
from edgectl.network.tc import rate_bits
from edgectl.runs.bench_spec import (
    DEFAULT_TESTBED_STATE_DIR,
    UNSHAPED,
    Bandwidth,
    PiparSettings,
    TestbedRequest,
)
from edgectl.yaml_text import show_value
from partitions.catalog import catalog_block_count, catalog_model_names

MAX_TESTBED_DEVICES = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TESTBED_NAME = re.compile(r"[a-z0-9]{1,8}")
TESTBED_KEYS = ("devices", "cpu", "server_cpu", "link", "name", "state_dir")


def known_strategies() -> tuple[str, ...]:
    from agents.strategies import STRATEGIES
    return tuple(STRATEGIES)


def known_models() -> tuple[str, ...]:
    return tuple(catalog_model_names())


class SpecChecker:
    """Validates values found at YAML paths of one file; each failure is one ConfigError."""

    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {problem}" if where
                           else f"{self.source}: {problem}")

    def expected(self, where: str, what: str, value: object) -> ConfigError:
        return self.error(where, f"expected {what}, got {show_value(value)}")

    def mapping(self, value: object, where: str, keys: tuple[str, ...],
                unknown: str = "unknown key") -> Mapping:
        if not isinstance(value, Mapping):
            raise self.expected(where, "a mapping" if where else "a mapping of bench settings "
                                "(see bench/example.yaml)", value)
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(keys)}"
                raise self.error(f"{where}.{key}" if where else str(key), f"{unknown}; {hint}")
        return value

    def boolean(self, value: object, where: str) -> bool:
        if isinstance(value, bool):
            return value
        raise self.expected(where, "true or false", value)

    def integer(self, value: object, where: str, least: int, most: int | None = None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= least \
                and (most is None or value <= most):
            return value
        allowed = f"an integer {least}..{most}" if most is not None \
            else f"an integer >= {least}"
        raise self.expected(where, allowed, value)

    def cores(self, value: object, where: str) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0.01:
            return float(value)
        raise self.expected(where, "a number of CPU cores >= 0.01 like 0.25", value)

    def cores_list(self, value: object, where: str) -> tuple[float, ...]:
        """One number of cores for every device, or a list of them (one per device)."""
        items = [] if value is None else value if isinstance(value, list) else [value]
        return tuple(self.cores(v, f"{where}[{i}]" if isinstance(value, list) else where)
                     for i, v in enumerate(items))

    def cores_per_device(self, cores: tuple[float, ...], devices: int, where: str) -> None:
        if len(cores) not in (0, 1, devices):
            raise self.error(where, f"expected one value or {devices} (one per device), "
                             f"got {len(cores)}")

    def rate(self, value: object, where: str) -> str:
        if isinstance(value, str) and rate_bits(value):
            return value.strip()
        raise self.expected(where, "a tc rate like 10mbit, 500kbit or 1gbit", value)

    def optional_rate(self, value: object, where: str) -> str | None:
        return None if value is None else self.rate(value, where)

    def optional_cores(self, value: object, where: str) -> float | None:
        return None if value is None else self.cores(value, where)

    def testbed_devices(self, value: object, where: str) -> int:
        return self.integer(value, where, 1, MAX_TESTBED_DEVICES)

    def optional_text(self, value: object, where: str) -> str | None:
        if value is None or (isinstance(value, str) and value.strip()):
            return value
        raise self.expected(where, "a non-empty string or null", value)

    def name(self, value: object, where: str) -> str:
        if isinstance(value, str) and _NAME.fullmatch(value):
            return value
        raise self.expected(where, "a folder name of letters, digits, '.', '_' or '-' "
                            "(1-64 characters)", value)

    def inventory(self, value: object, base_dir: str | None) -> str | None:
        path = self.optional_text(value, "inventory")
        if path is None or base_dir is None:
            return path
        return os.path.join(base_dir, os.path.expanduser(path))

    def choices(self, value: object, where: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.expected(where, f"a non-empty list of {', '.join(allowed)}", value)
        for i, item in enumerate(value):
            if item not in allowed:
                raise self.expected(f"{where}[{i}]", f"one of {', '.join(allowed)}", item)
            if item in value[:i]:
                raise self.error(f"{where}[{i}]", f"{show_value(item)} is listed twice")
        return tuple(value)

    def dataset(self, value: object, where: str = "dataset") -> str:
        from agents.datasets import dataset_names

        known = [n.split(":")[0] for n in dataset_names()]
        if isinstance(value, str) and value.split(":")[0] in known:
            return value
        raise self.expected(where, f"one of {', '.join(dataset_names())}", value)

    def testbed(self, value: object) -> TestbedRequest | None:
        if value is None:
            return None
        tb = self.mapping(value, "testbed", TESTBED_KEYS)
        devices = self.testbed_devices(tb.get("devices", 2), "testbed.devices")
        cores = self.cores_list(tb.get("cpu"), "testbed.cpu")
        self.cores_per_device(cores, devices, "testbed.cpu")
        name = tb.get("name", "bench")
        if not isinstance(name, str) or not _TESTBED_NAME.fullmatch(name):
            raise self.expected("testbed.name", "1-8 of a-z, 0-9", name)
        state_dir = self.optional_text(tb.get("state_dir"), "testbed.state_dir")
        return TestbedRequest(
            devices=devices, cpu=cores, name=name,
            server_cpu=self.optional_cores(tb.get("server_cpu"), "testbed.server_cpu"),
            link=self.optional_rate(tb.get("link"), "testbed.link"),
            state_dir=state_dir or DEFAULT_TESTBED_STATE_DIR)

    def bandwidths(self, value: object, where: str = "bandwidths") -> tuple[Bandwidth, ...]:
        if not isinstance(value, list) or not value:
            raise self.expected(where, "a non-empty list of settings, each unshaped "
                                "or {up: RATE, down: RATE}", value)
        found = []
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if item == "unshaped":
                bw = UNSHAPED
            elif isinstance(item, Mapping):
                entry = self.mapping(item, here, ("up", "down"))
                up, down = entry.get("up"), entry.get("down")
                if up is None and down is None:
                    raise self.error(here, "give up, down or both (or write unshaped)")
                bw = Bandwidth(self.optional_rate(up, f"{here}.up"),
                               self.optional_rate(down, f"{here}.down"))
            else:
                raise self.expected(here, "unshaped or {up: RATE, down: RATE}", item)
            if bw in found:
                raise self.error(here, f"{bw.label} is listed twice")
            found.append(bw)
        return tuple(found)

    def pipar(self, value: object, batch_size: int, models: tuple[str, ...]) -> PiparSettings:
        if value is None:
            return PiparSettings()
        entry = self.mapping(value, "pipar", ("split_point", "microbatches"))
        p, n = entry.get("split_point"), entry.get("microbatches")
        if p is not None:
            most = min(catalog_block_count(m) for m in models)
            self.integer(p, "pipar.split_point", 0, most)
        if n is not None:
            self.integer(n, "pipar.microbatches", 1, batch_size)
        return PiparSettings(p, n)
