"""The run configuration every agent receives, and the per-agent launch settings.

The coordinator writes one JSON line on an agent's stdin: {"run": RunConfig, "agent":
AgentSettings}. It carries the run's secret, which is why it never goes on a command line.
Both are validated here on construction, so an agent refuses a bad config before it
touches a socket.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from agents.errors import AgentError

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")


def is_rate(value: object) -> bool:
    """A pacing rate: a positive number of bit/s (agents.wire.Connection.pace)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class DeviceSpec:
    """One device's place in the run: its name, split point p and micro-batch count N, and
    the rates its connection to the server is paced to, bit/s (the device's sends, up; the
    server's, down; None: not paced; see agents.wire.Connection.pace)."""

    name: str
    split_point: int | None = None    # None: the strategy's default
    microbatches: int | None = None   # None: the strategy's default
    pace_up_bps: float | None = None
    pace_down_bps: float | None = None


@dataclass(frozen=True)
class OptimizerSettings:
    """What one stage's optimizer is built from in one round (agents.stage.make_optimizer)."""

    name: str
    lr: float
    momentum: float = 0.0      # sgd only
    weight_decay: float = 0.0


@dataclass(frozen=True)
class DPSettings:
    """Sample-level DP-SGD on every part of the model (agents.privacy has the mechanism).

    noise_multiplier is sigma of the whole model's update: Gaussian noise of standard
    deviation sigma * max_grad_norm on the sum of per-sample gradients clipped to
    max_grad_norm. delta is the delta of the (epsilon, delta) the accountant reports.
    noise_seed fixes the noise for tests: anyone who knows it can take the noise away, so
    a run with one has no guarantee; None draws the seed from the OS."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or not self.max_grad_norm > 0:
            raise AgentError("run config: dp noise_multiplier and max_grad_norm must be "
                             f"positive, got {self.noise_multiplier} and {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise AgentError(f"run config: dp delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    strategy: str
    model: str
    dataset: str
    devices: tuple[DeviceSpec, ...]
    data_dir: str | None = None
    partition: str = "iid"
    seed: int = 0
    rounds: int = 1
    batch_size: int = 32
    max_batches: int = 0          # per device per round; 0 = the whole shard
    lr: float = 0.01
    momentum: float = 0.9         # sgd only
    optimizer: str = "sgd"        # one of OPTIMIZERS, the same on device and server parts
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # one of LR_SCHEDULES, by round (see lr_at)
    lr_step_rounds: int = 1       # step: multiply the rate by lr_gamma every this many rounds
    lr_gamma: float = 0.1
    batch_norm: bool = True
    eval_samples: int = 0         # 0 = the whole test set
    allow_raw_upload: bool = False  # p = 0 (raw samples to the server) only when True
    eval_every: int = 1           # evaluate after every K-th round, and after the last
    paced: bool = False           # server: start each round after the first only when the
                                  # coordinator sends its placements (agents.control)
    min_devices: int = 1          # server: fail the run when fewer devices remain
    heartbeat_timeout: float = 30.0   # seconds without a byte from a peer: it is lost
    dp: DPSettings | None = None  # DP-SGD on every part (agents.privacy); None: plain training
    strategy_options: dict = field(default_factory=dict)   # the strategy's own options,
                                  # checked by it (e.g. agents.strategies.ecofed.EcoFedSettings)

    @property
    def heartbeat_interval(self) -> float:
        """How often a quiet connection sends a heartbeat: often enough that several are
        missed before the peer gives up on it."""
        return self.heartbeat_timeout / 5

    def lr_at(self, round_: int) -> float:
        """The learning rate of round `round_` (from 1): what torch's StepLR and
        CosineAnnealingLR (T_max = rounds, eta_min = 0) give when stepped after each round.
        Every stage builds its optimizer afresh each round, so the rate is a function of the
        round alone and every part of the model, on any host, uses the same one."""
        done = round_ - 1   # rounds before this one
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** (done // self.lr_step_rounds)
        if self.lr_schedule == "cosine":
            return self.lr * (1 + math.cos(math.pi * done / self.rounds)) / 2
        return self.lr

    def optimizer_at(self, round_: int) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.lr_at(round_), self.momentum,
                                 self.weight_decay)

    def evaluates_after(self, round_: int) -> bool:
        return round_ % self.eval_every == 0 or round_ == self.rounds

    def __post_init__(self) -> None:
        positive = ("rounds", "batch_size", "lr", "eval_every", "min_devices",
                    "heartbeat_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise AgentError(f"run config: {name} must be positive, got {getattr(self, name)}")
        for name in ("max_batches", "eval_samples", "seed"):
            if getattr(self, name) < 0:
                raise AgentError(f"run config: {name} must be >= 0, got {getattr(self, name)}")
        if not self.devices:
            raise AgentError("run config: at least one device is needed")
        if self.min_devices > len(self.devices):
            raise AgentError(f"run config: min_devices {self.min_devices} is more than the "
                             f"run's {len(self.devices)} devices")
        if self.optimizer not in OPTIMIZERS:
            raise AgentError(f"run config: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise AgentError(f"run config: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.weight_decay < 0 or self.momentum < 0 or self.lr_gamma <= 0:
            raise AgentError("run config: weight_decay and momentum must be >= 0 and lr_gamma "
                             "> 0")
        if self.lr_step_rounds < 1:
            raise AgentError(f"run config: lr_step_rounds must be >= 1, got {self.lr_step_rounds}")
        if self.dp is not None and self.batch_norm:
            raise AgentError("run config: dp cannot train batch-norm layers (a sample's "
                             "gradient depends on its batch); set batch_norm false")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise AgentError(f"run config: device names repeat: {names}")
        for d in self.devices:
            if d.microbatches is not None and not 1 <= d.microbatches <= self.batch_size:
                raise AgentError(f"run config: device {d.name}: microbatches must be "
                                 f"1..batch_size ({self.batch_size}), got {d.microbatches}")
            if d.split_point == 0:
                self.check_raw_upload(d.name)
            for rate in (d.pace_up_bps, d.pace_down_bps):
                if rate is not None and not is_rate(rate):
                    raise AgentError(f"run config: device {d.name}: a pacing rate must be "
                                     f"positive (bit/s) or null, got {rate}")

    def check_raw_upload(self, device: str) -> None:
        """Split point 0 sends a device's raw samples to the server: refused unless the run
        allows it (the premise of split learning is that raw data stays on the device)."""
        if not self.allow_raw_upload:
            raise AgentError(f"device {device}: split point 0 would send its raw samples to "
                             "the server, and this run does not allow raw upload")

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise AgentError(f"device {name!r} is not part of run {self.run_id}")

    def device_index(self, name: str) -> int:
        return [d.name for d in self.devices].index(self.device(name).name)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise AgentError(f"run config: unknown keys {sorted(unknown)}; this host's agents "
                             "are older than the coordinator: run `edgectl provision`")
        devices = tuple(DeviceSpec(**d) for d in data.get("devices", ()))
        dp = DPSettings(**data["dp"]) if data.get("dp") else None
        return cls(**{**data, "devices": devices, "dp": dp})


@dataclass(frozen=True)
class AgentSettings:
    """What differs between the agents of one run."""

    role: str                      # "server" or "device"
    name: str
    secret: str                    # hex; proves membership of the run on every connection
    server_host: str = "127.0.0.1"
    server_port: int = 0           # device: where to connect; server: 0 = any free port
    bind_host: str = "127.0.0.1"   # server; a decentralized node listens for peers here
    threads: int = 0               # torch threads; 0 = the cores this agent owns
    model_out: str | None = None   # server: write the final model here (safetensors)
    checkpoint_out: str | None = None  # server: the checkpoint, rewritten after every round
    init_model: str | None = None  # server: start from this model file (agents.model_file)
    first_round: int = 1           # server: the round to start at (a resumed run's next)
    data_dir: str | None = None    # this host's dataset folder (edgectl_data_dir), if set
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ("server", "device"):
            raise AgentError(f"agent settings: role must be server or device, got {self.role!r}")
        if self.first_round < 1:
            raise AgentError(f"agent settings: first_round must be >= 1, got {self.first_round}")
        try:
            if len(bytes.fromhex(self.secret)) < 16:
                raise ValueError
        except ValueError as e:
            raise AgentError("agent settings: secret must be at least 16 bytes of hex") from e


def data_dir_for(run: RunConfig, agent: AgentSettings) -> str | None:
    """The host's own dataset folder wins over the run's --data-dir."""
    return agent.data_dir or run.data_dir


def parse_launch_line(line: str) -> tuple[RunConfig, AgentSettings]:
    try:
        data = json.loads(line)
        return RunConfig.from_json(data["run"]), AgentSettings(**data["agent"])
    except (ValueError, KeyError, TypeError) as e:
        raise AgentError(f"launch config on stdin is malformed: {e}") from e


def launch_line(run: RunConfig, agent: AgentSettings) -> str:
    return json.dumps({"run": run.to_json(), "agent": asdict(agent)}) + "\n"
