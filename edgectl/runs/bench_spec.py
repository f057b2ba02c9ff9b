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

Read and checked by edgectl/runs/bench_spec_parse.py (`load_bench_spec`). The `pipar`
settings apply to the pipar strategy only: split and fl keep the runner's own
defaults (split: the middle block boundary). A relative `inventory` path resolves against
the spec file's folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from edgectl.network.tc import rate_bits

# = edgectl.network.testbed.DEFAULT_STATE_DIR
DEFAULT_TESTBED_STATE_DIR = "/var/lib/edgectl/testbeds"

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
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.label).strip("-")

    @property
    def rate_bps(self) -> float:
        """The slower of the shaped directions in bits/s; infinity when unshaped."""
        rates = [rate_bits(r) for r in (self.up, self.down) if r]
        return min(rates) if rates else math.inf


UNSHAPED = Bandwidth()


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
class Combination:
    """One run of the sweep."""

    strategy: str
    model: str
    bandwidth: Bandwidth
    repeat: int

    @property
    def label(self) -> str:
        return f"{self.strategy} {self.model} {self.bandwidth.label} #{self.repeat}"


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

    def combinations(self) -> list[Combination]:
        """Every run, in the order the sweep makes them: bandwidth outermost (one shaping
        change per setting), then model, repeat and strategy (strategies side by side)."""
        return [Combination(s, m, b, r) for b in self.bandwidths for m in self.models
                for r in range(self.repeats) for s in self.strategies]

    def train_options(self, combination: Combination):
        """The `edgectl train` options of one combination."""
        from edgectl.runs.options import TrainOptions

        pipar = combination.strategy == "pipar"
        return TrainOptions(
            strategy=combination.strategy, model=combination.model, dataset=self.dataset,
            data_dir=self.data_dir, rounds=self.rounds, batch_size=self.batch_size,
            split_point=self.pipar.split_point if pipar else None,
            microbatches=self.pipar.microbatches if pipar else None,
            max_batches=self.max_batches, seed=self.seed, eval_samples=self.eval_samples,
            allow_raw_upload=self.allow_raw_upload)

    def to_json(self) -> dict:
        return asdict(self)




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
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BenchRun:
        c = dict(data["combination"])
        c["bandwidth"] = Bandwidth(**c["bandwidth"])
        return cls(**{**data, "combination": Combination(**c),
                      "shaping": tuple(data.get("shaping") or ())})
