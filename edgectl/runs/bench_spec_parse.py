"""Reading a bench spec: the YAML file of `edgectl bench SPEC.yaml`, checked key by key.

The format is edgectl/runs/bench_spec.py's docstring. Every key is optional except that the
file must be a mapping. Every error is one line naming the file, the YAML path, the bad
value and what is allowed, raised as ConfigError. A relative `inventory` path resolves
against the spec file's folder.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from edgectl.errors import ConfigError
from edgectl.network.tc import rate_bits
from edgectl.runs.bench_spec import (
    DEFAULT_TESTBED_STATE_DIR,
    UNSHAPED,
    Bandwidth,
    BenchSpec,
    PiparSettings,
    TestbedRequest,
)
from edgectl.yaml_text import read_yaml, show_value
from partitions.zoo import block_count

MAX_TESTBED_DEVICES = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TESTBED_NAME = re.compile(r"[a-z0-9]{1,8}")
_TOP_KEYS = ("name", "inventory", "testbed", "strategies", "models", "dataset", "data_dir",
             "batch_size", "rounds", "max_batches", "repeats", "seed", "bandwidths", "pipar",
             "eval_samples", "allow_raw_upload")
_TESTBED_KEYS = ("devices", "cpu", "server_cpu", "link", "name", "state_dir")




def load_bench_spec(path: str | os.PathLike) -> BenchSpec:
    """The bench spec in the YAML file at `path`."""
    source = os.fspath(path)
    data = read_yaml(source, "pass an existing bench spec such as bench/example.yaml")
    return parse_bench_spec(data, source, default_name=Path(source).stem,
                            base_dir=str(Path(source).resolve().parent))


def parse_bench_spec(data: object, source: str, default_name: str = "bench",
                     base_dir: str | None = None) -> BenchSpec:
    """The bench spec in already-loaded YAML `data`; messages start with `source`."""
    c = _Checker(source)
    top = c.mapping(data, "", _TOP_KEYS)
    if top.get("inventory") is not None and top.get("testbed") is not None:
        raise c.error("testbed", "give either inventory or testbed, not both")
    spec = BenchSpec(
        name=c.name(top.get("name", default_name), "name"), source=source,
        inventory=c.inventory(top.get("inventory"), base_dir),
        testbed=c.testbed(top.get("testbed")),
        strategies=c.choices(top.get("strategies", ["fl", "split", "pipar"]), "strategies",
                             _strategies()),
        models=c.choices(top.get("models", ["vgg5"]), "models", _models()),
        dataset=c.dataset(top.get("dataset", "fashion-mnist")),
        data_dir=c.optional_text(top.get("data_dir"), "data_dir"),
        batch_size=c.integer(top.get("batch_size", 32), "batch_size", 1),
        rounds=c.integer(top.get("rounds", 2), "rounds", 1),
        max_batches=c.integer(top.get("max_batches", 20), "max_batches", 0),
        repeats=c.integer(top.get("repeats", 1), "repeats", 1),
        seed=c.integer(top.get("seed", 0), "seed", 0),
        bandwidths=c.bandwidths(top.get("bandwidths", ["unshaped"])),
        eval_samples=c.integer(top.get("eval_samples", 1000), "eval_samples", 0),
        allow_raw_upload=c.boolean(top.get("allow_raw_upload", False), "allow_raw_upload"))
    return replace(spec, pipar=c.pipar(top.get("pipar"), spec.batch_size, spec.models))


def _strategies() -> tuple[str, ...]:
    from agents.strategies import STRATEGIES
    return tuple(STRATEGIES)


def _models() -> tuple[str, ...]:
    from partitions.zoo import model_names
    return tuple(model_names())


class _Checker:
    """Validates values found at YAML paths of one file; each failure is one ConfigError."""

    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {problem}" if where
                           else f"{self.source}: {problem}")

    def expected(self, where: str, what: str, value: object) -> ConfigError:
        return self.error(where, f"expected {what}, got {show_value(value)}")

    def mapping(self, value: object, where: str, keys: tuple[str, ...]) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.expected(where, "a mapping" if where else "a mapping of bench settings "
                                "(see bench/example.yaml)", value)
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(keys)}"
                raise self.error(f"{where}.{key}" if where else str(key),
                                 f"unknown key; {hint}")
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

    def rate(self, value: object, where: str) -> str:
        if isinstance(value, str) and rate_bits(value):
            return value.strip()
        raise self.expected(where, "a tc rate like 10mbit, 500kbit or 1gbit", value)

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

    def dataset(self, value: object) -> str:
        from agents.datasets import dataset_names

        known = [n.split(":")[0] for n in dataset_names()]
        if isinstance(value, str) and value.split(":")[0] in known:
            return value
        raise self.expected("dataset", f"one of {', '.join(dataset_names())}", value)

    def testbed(self, value: object) -> TestbedRequest | None:
        if value is None:
            return None
        tb = self.mapping(value, "testbed", _TESTBED_KEYS)
        devices = self.integer(tb.get("devices", 2), "testbed.devices", 1, MAX_TESTBED_DEVICES)
        cpu = tb.get("cpu")
        cpu = [] if cpu is None else cpu if isinstance(cpu, list) else [cpu]
        cores = tuple(self.cores(v, f"testbed.cpu[{i}]") for i, v in enumerate(cpu))
        if len(cores) not in (0, 1, devices):
            raise self.error("testbed.cpu", f"expected one value or {devices} (one per "
                             f"device), got {len(cores)}")
        server_cpu = tb.get("server_cpu")
        link = tb.get("link")
        name = tb.get("name", "bench")
        if not isinstance(name, str) or not _TESTBED_NAME.fullmatch(name):
            raise self.expected("testbed.name", "1-8 of a-z, 0-9", name)
        state_dir = self.optional_text(tb.get("state_dir"), "testbed.state_dir")
        return TestbedRequest(
            devices=devices, cpu=cores, name=name,
            server_cpu=None if server_cpu is None else self.cores(server_cpu,
                                                                   "testbed.server_cpu"),
            link=None if link is None else self.rate(link, "testbed.link"),
            state_dir=state_dir or DEFAULT_TESTBED_STATE_DIR)

    def bandwidths(self, value: object) -> tuple[Bandwidth, ...]:
        if not isinstance(value, list) or not value:
            raise self.expected("bandwidths", "a non-empty list of settings, each unshaped "
                                "or {up: RATE, down: RATE}", value)
        found = []
        for i, item in enumerate(value):
            where = f"bandwidths[{i}]"
            if item == "unshaped":
                bw = UNSHAPED
            elif isinstance(item, Mapping):
                entry = self.mapping(item, where, ("up", "down"))
                up, down = entry.get("up"), entry.get("down")
                if up is None and down is None:
                    raise self.error(where, "give up, down or both (or write unshaped)")
                bw = Bandwidth(None if up is None else self.rate(up, f"{where}.up"),
                               None if down is None else self.rate(down, f"{where}.down"))
            else:
                raise self.expected(where, "unshaped or {up: RATE, down: RATE}", item)
            if bw in found:
                raise self.error(where, f"{bw.label} is listed twice")
            found.append(bw)
        return tuple(found)

    def pipar(self, value: object, batch_size: int, models: tuple[str, ...]) -> PiparSettings:
        if value is None:
            return PiparSettings()
        entry = self.mapping(value, "pipar", ("split_point", "microbatches"))
        p, n = entry.get("split_point"), entry.get("microbatches")
        if p is not None:
            most = min(block_count(m) for m in models)
            self.integer(p, "pipar.split_point", 0, most)
        if n is not None:
            self.integer(n, "pipar.microbatches", 1, batch_size)
        return PiparSettings(p, n)
