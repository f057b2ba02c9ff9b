"""Reading a bench spec: the YAML file of `edgectl bench SPEC.yaml`, checked key by key.

The format is edgectl/runs/bench_spec.py's docstring; `sweep` and `settings` are parsed by
bench_axes.py. Every key is optional except that the file must be a mapping. Every error
is one line naming the file, the YAML path, the bad value and what is allowed, raised as
ConfigError when the spec is loaded, before any testbed comes up. Relative `inventory`
and `bandwidth_schedule` paths resolve against the spec file's folder.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from edgectl.runs.bench_axes import parse_settings
from edgectl.runs.bench_spec import BenchSpec
from edgectl.runs.spec_checks import SpecChecker, known_models, known_strategies
from edgectl.yaml_text import read_yaml

_TOP_KEYS = ("name", "inventory", "testbed", "strategies", "models", "dataset", "data_dir",
             "batch_size", "rounds", "max_batches", "repeats", "seed", "bandwidths", "pipar",
             "eval_samples", "allow_raw_upload", "sweep", "settings")


def load_bench_spec(path: str | os.PathLike) -> BenchSpec:
    """The bench spec in the YAML file at `path`."""
    source = os.fspath(path)
    data = read_yaml(source, "pass an existing bench spec such as bench/example.yaml")
    return parse_bench_spec(data, source, default_name=Path(source).stem,
                            base_dir=str(Path(source).resolve().parent))


def parse_bench_spec(data: object, source: str, default_name: str = "bench",
                     base_dir: str | None = None) -> BenchSpec:
    """The bench spec in already-loaded YAML `data`; messages start with `source`."""
    c = SpecChecker(source)
    top = c.mapping(data, "", _TOP_KEYS)
    if top.get("inventory") is not None and top.get("testbed") is not None:
        raise c.error("testbed", "give either inventory or testbed, not both")
    spec = BenchSpec(
        name=c.name(top.get("name", default_name), "name"), source=source,
        inventory=c.inventory(top.get("inventory"), base_dir),
        testbed=c.testbed(top.get("testbed")),
        strategies=c.choices(top.get("strategies", ["fl", "split", "pipar"]), "strategies",
                             known_strategies()),
        models=c.choices(top.get("models", ["vgg5"]), "models", known_models()),
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
    spec = replace(spec, pipar=c.pipar(top.get("pipar"), spec.batch_size, spec.models))
    return parse_settings(c, top, spec, base_dir)
