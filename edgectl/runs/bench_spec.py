"""The bench spec: which sweep `edgectl bench SPEC.yaml` runs, validated into frozen dataclasses.

    name: fl-split-pipar            # names the output folder
    inventory: lab.yaml             # OR testbed: {devices: 2, cpu: [0.25], server_cpu: null,
                                    #              link: null, name: bench, state_dir: ...}
                                    # neither: the built-in local fleet
    strategies: [fl, split, pipar]
    models: [vgg5]
    dataset: fashion-mnist          # data_dir: optional folder holding its files
    batch_size: 32
    rounds: 2
    max_batches: 20                 # per device per round; 0 = the whole shard
    repeats: 1
    seed: 0
    bandwidths: [unshaped, {up: 10mbit, down: 10mbit}]   # "unshaped" = no shaping
    pipar: {split_point: null, microbatches: null}        # null = plan on the spot
    eval_samples: 1000
    allow_raw_upload: false         # true lets pipar plan p = 0 (raw samples to the server)
    sweep:                          # axes: every combination of their values is a setting
      microbatches: [2, 4]          # any edgectl train option (TrainOptions field) ...
      testbed.cpu: [0.1, 0.25]      # ... or testbed.devices / .cpu / .server_cpu / .link
    settings:                       # explicit settings, each run with every sweep point
      - {label: slow-net, bandwidths: [{up: 2mbit, down: 2mbit}]}
      - label: drop                 # a bandwidth schedule file (edgectl.network.schedule),
        bandwidth_schedule: schedules/drop.yaml   # relative to the spec's folder
        adapt: true                 # a setting may also narrow strategies and models

A Setting is one point of `sweep` x `settings` (one empty setting when neither is given);
every setting runs every strategy x model x bandwidth x repeat (a setting's own
`strategies`, `models` or `bandwidths` replace the spec's). The top-level keys are the
base every setting starts from; a setting's values override them, and the `pipar` block
overrides them for pipar only. An option is applied only to the strategies it applies to
(`APPLIES_TO`, as compare.baseline_options drops pipar's options for its baselines): a
microbatches axis leaves fl and split as they were, so they still run beside pipar in every
setting, measured under the same conditions. Read and checked by
edgectl/runs/bench_spec_parse.py (`load_bench_spec`) and bench_axes.py (sweep, settings).
A relative `inventory` path resolves against the spec file's folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from edgectl.network.tc import rate_bits

# = edgectl.network.testbed.DEFAULT_STATE_DIR
DEFAULT_TESTBED_STATE_DIR = "/var/lib/edgectl/testbeds"

# Options that only some strategies take (TrainOptions refuses them elsewhere); every other
# option applies to every strategy.
APPLIES_TO = {"split_point": ("split", "pipar", "ecofed"), "microbatches": ("pipar",),
              "min_split_point": ("pipar",), "max_microbatches": ("pipar",),
              "adapt": ("pipar",), "calibrate": ("pipar",),
              "uncalibrated": ("pipar", "ecofed"), **dict.fromkeys(
                  ("device_init", "warmup_rounds", "quantize", "replay_period",
                   "replay_buffer_mb"), ("ecofed",)),
              "sample_size": ("plexus",), "topology": ("dpsgd",), "churn": ("plexus", "dpsgd")}


def applies(option: str, strategy: str) -> bool:
    return strategy in APPLIES_TO.get(option, (strategy,))


@dataclass(frozen=True)
class Bandwidth:
    """One shaping setting of the sweep: rates for each device's link, or none (unshaped)."""

    up: str | None = None
    down: str | None = None

    @property
    def shaped(self) -> bool:
        return self.up is not None or self.down is not None

    @property
    def label(self) -> str:
        if not self.shaped:
            return "unshaped"
        if self.up == self.down:
            return self.up
        return " ".join(f"{k} {v}" for k, v in (("up", self.up), ("down", self.down)) if v)

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        return slug(self.label)

    @property
    def rate_bps(self) -> float:
        """The slower of the shaped directions in bits/s; infinity when unshaped."""
        rates = [rate_bits(r) for r in (self.up, self.down) if r]
        return min(rates) if rates else math.inf


UNSHAPED = Bandwidth()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


@dataclass(frozen=True)
class TestbedRequest:
    """The emulated fleet the sweep brings up first and always takes down at the end."""

    __test__ = False

    devices: int = 2
    cpu: tuple[float, ...] = ()
    server_cpu: float | None = None
    link: str | None = None
    name: str = "bench"
    state_dir: str = DEFAULT_TESTBED_STATE_DIR


@dataclass(frozen=True)
class PiparSettings:
    split_point: int | None = None   # None: planned on the spot, as `edgectl train` does
    microbatches: int | None = None


@dataclass(frozen=True)
class Setting:
    """One point of the spec's sweep x settings: the values it sets (train options, testbed
    keys, bandwidth_schedule; lists as tuples) and what follows from them."""

    label: str = ""                                # "" only for the spec's one plain setting
    values: tuple[tuple[str, object], ...] = ()    # (axis, value), in the spec's order
    testbed: TestbedRequest | None = None          # its own testbed; None: the spec's fleet
    schedule: str | None = None                    # the bandwidth schedule file's path
    strategies: tuple[str, ...] | None = None      # None: the spec's
    models: tuple[str, ...] | None = None
    bandwidths: tuple[Bandwidth, ...] | None = None

    @property
    def options(self) -> dict[str, object]:
        """The train options it sets."""
        return {k: v for k, v in self.values
                if not k.startswith("testbed.") and k != "bandwidth_schedule"}

    def to_json(self) -> dict:
        data = asdict(self)
        data["values"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.values}
        return data

    @classmethod
    def from_json(cls, data: dict | None) -> Setting:
        if not data:
            return cls()
        tb = data.get("testbed")
        bws = data.get("bandwidths")
        return cls(
            label=data.get("label", ""),
            values=tuple((k, tuple(v) if isinstance(v, list) else v)
                         for k, v in (data.get("values") or {}).items()),
            testbed=TestbedRequest(**{**tb, "cpu": tuple(tb.get("cpu") or ())}) if tb else None,
            schedule=data.get("schedule"),
            strategies=tuple(data["strategies"]) if data.get("strategies") else None,
            models=tuple(data["models"]) if data.get("models") else None,
            bandwidths=tuple(Bandwidth(**b) for b in bws) if bws else None)


PLAIN = Setting()


@dataclass(frozen=True)
class Combination:
    """One run of the sweep."""

    strategy: str
    model: str
    bandwidth: Bandwidth
    repeat: int
    setting: Setting = PLAIN

    @property
    def label(self) -> str:
        where = f"{self.setting.label} " if self.setting.label else ""
        return f"{self.strategy} {self.model} {self.bandwidth.label} {where}#{self.repeat}"

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "model": self.model,
                "bandwidth": asdict(self.bandwidth), "repeat": self.repeat,
                "setting": self.setting.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> Combination:
        return cls(data["strategy"], data["model"], Bandwidth(**data["bandwidth"]),
                   data["repeat"], Setting.from_json(data.get("setting")))


@dataclass(frozen=True)
class BenchSpec:
    name: str
    source: str = "bench spec"
    inventory: str | None = None
    testbed: TestbedRequest | None = None
    strategies: tuple[str, ...] = ("fl", "split", "pipar")
    models: tuple[str, ...] = ("vgg5",)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    batch_size: int = 32
    rounds: int = 2
    max_batches: int = 20
    repeats: int = 1
    seed: int = 0
    bandwidths: tuple[Bandwidth, ...] = (UNSHAPED,)
    pipar: PiparSettings = field(default_factory=PiparSettings)
    eval_samples: int = 1000
    allow_raw_upload: bool = False   # p = 0 (raw samples to the server) only when true
    axes: tuple[str, ...] = ()       # every key the settings set, in order (results columns)
    settings: tuple[Setting, ...] = (PLAIN,)

    def testbed_of(self, setting: Setting) -> TestbedRequest | None:
        """The testbed `setting` runs on (None: the spec's inventory or the local fleet)."""
        return setting.testbed or self.testbed

    def combinations(self) -> list[Combination]:
        """Every run, in the order the sweep makes them: settings grouped by the testbed they
        need (each brought up once), then repeat (repeats interleaved, so drift over the
        sweep spreads over every setting), setting, bandwidth, model, and strategy innermost:
        the strategies of one condition run back to back, measured in the same conditions."""
        fleets = list(dict.fromkeys(self.testbed_of(s) for s in self.settings))
        return [Combination(strategy, model, bandwidth, repeat, s)
                for fleet in fleets for repeat in range(self.repeats)
                for s in self.settings if self.testbed_of(s) == fleet
                for bandwidth in s.bandwidths or self.bandwidths
                for model in s.models or self.models
                for strategy in s.strategies or self.strategies]

    def option_values(self, combination: Combination) -> tuple[dict, tuple[str, ...]]:
        """The train options a combination sets beyond strategy and model, and the names
        of the setting's options left out because its strategy does not take them."""
        values: dict[str, object] = {
            "dataset": self.dataset, "data_dir": self.data_dir, "rounds": self.rounds,
            "batch_size": self.batch_size, "max_batches": self.max_batches,
            "seed": self.seed, "eval_samples": self.eval_samples,
            "allow_raw_upload": self.allow_raw_upload}
        if combination.strategy == "pipar":
            values.update({k: v for k, v in asdict(self.pipar).items() if v is not None})
        values.update(combination.setting.options)
        dropped = tuple(k for k in values if not applies(k, combination.strategy))
        return {k: v for k, v in values.items() if k not in dropped}, dropped

    def train_options(self, combination: Combination):
        """The `edgectl train` options of one combination."""
        from edgectl.runs.options import TrainOptions

        values, _ = self.option_values(combination)
        return TrainOptions(strategy=combination.strategy, model=combination.model, **values)

    def to_json(self) -> dict:
        data = asdict(self)
        data["settings"] = [s.to_json() for s in self.settings]
        return data


@dataclass(frozen=True)
class BenchRun:
    """What came of one combination: its run record (relative to the bench folder; None
    when the run never started) and, when it failed, the one-line error."""

    combination: Combination
    status: str                       # "completed" or "failed"
    run_dir: str | None = None
    error: str | None = None
    shaping: tuple[dict, ...] = ()    # per device: rates set and measured (edgectl.network.shaping)

    def to_json(self) -> dict:
        return {**asdict(self), "combination": self.combination.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> BenchRun:
        return cls(**{**data, "combination": Combination.from_json(data["combination"]),
                      "shaping": tuple(data.get("shaping") or ())})
