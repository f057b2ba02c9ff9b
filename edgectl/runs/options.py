"""The options of `edgectl train`, validated before anything starts on any host."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agents.config import LR_SCHEDULES, OPTIMIZERS, DPSettings
from agents.dataset_catalog import dataset_names, parse_partition
from agents.errors import DatasetError
from agents.strategies import STRATEGIES
from edgectl.errors import UsageError


def block_count_of(model: str) -> int:
    from partitions.catalog import catalog_block_count

    return catalog_block_count(model)


@dataclass(frozen=True)
class TrainOptions:
    strategy: str = "pipar"
    model: str = "vgg5"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    rounds: int = 2
    batch_size: int = 32
    split_point: int | None = None
    microbatches: int | None = None
    max_batches: int = 0
    lr: float = 0.01
    momentum: float | None = None         # sgd only; None: 0.9
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_step_rounds: int | None = None     # step schedule only; None: 1
    lr_gamma: float | None = None         # step schedule only; None: 0.1
    seed: int = 0
    partition: str = "iid"
    batch_norm: bool = True
    eval_samples: int = 0
    allow_raw_upload: bool = False        # p = 0 only with this explicit opt-in
    min_split_point: int | None = None    # pipar planning: the least p it may choose
    max_microbatches: int | None = None   # pipar planning: the most N it may choose
    eval_every: int = 1                   # evaluate after every K-th round and the last
    adapt: bool = False                   # pipar: re-plan between rounds from measurements
    calibrate: bool = False               # pipar: calibrate the profiles it plans from first
    uncalibrated: bool = False            # pipar, ecofed: plan without stored calibration
    min_devices: int = 1                  # fail the run when fewer devices remain
    heartbeat_timeout: float = 30.0       # s without a byte from a peer: it is lost
    rejoin_attempts: int = 3              # restarts of a lost device's agent, in a row
    init_from: str | None = None          # start from this model file (model.safetensors)
    dp: bool = False                      # DP-SGD on every part (agents/privacy.py)
    dp_noise_multiplier: float | None = None   # --dp only; None: DPSettings' default
    dp_max_grad_norm: float | None = None
    dp_delta: float | None = None
    dp_noise_seed: int | None = None      # fixes the noise (tests): voids the guarantee
    device_init: str | None = None        # ecofed: the frozen device blocks' model file
    warmup_rounds: int | None = None      # ecofed: R rounds of fl, then freeze; None: 0
    quantize: str | None = None           # ecofed: int8, int8-channel or none; None: int8
    replay_period: int | None = None      # ecofed: upload every K-th round; None: 1
    replay_buffer_mb: float | None = None  # ecofed: the server's replay buffer budget
    sample_size: int | None = None        # plexus: nodes sampled a round; None: half the fleet
    topology: str | None = None           # dpsgd: ring or regular:K; None: ring
    churn: str | None = None              # plexus, dpsgd: an availability trace file
    link_pacing: bool = True              # pace connections to shaped links (runs/pacing.py)

    ECOFED_OPTIONS = ("device_init", "warmup_rounds", "quantize", "replay_period",
                      "replay_buffer_mb")
    DECENTRAL_OPTIONS = ("sample_size", "topology", "churn")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy {self.strategy!r} is unknown; choose one of: "
                             f"{', '.join(sorted(STRATEGIES))}")
        self._check_model()
        if self.dataset.split(":")[0] not in [n.split(":")[0] for n in dataset_names()]:
            raise UsageError(f"--dataset {self.dataset!r} is unknown; choose one of: "
                             f"{', '.join(dataset_names())}")
        try:
            object.__setattr__(self, "partition", parse_partition(self.partition))
        except DatasetError as e:
            raise UsageError(f"--partition: {e}") from None
        for name in ("rounds", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        for name in ("max_batches", "seed", "eval_samples"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, "
                                 f"got {getattr(self, name)}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        self._check_resilience()
        self._check_optimizer()
        if self.microbatches is not None and not 1 <= self.microbatches <= self.batch_size:
            raise UsageError(f"--microbatches must be 1..{self.batch_size} (the batch size), "
                             f"got {self.microbatches}")
        self._check_planning_limits()
        self._check_privacy()
        self._check_ecofed()
        self._check_decentral()

    @property
    def decentralized(self) -> bool:
        return self.strategy in ("plexus", "dpsgd")

    def _check_decentral(self) -> None:
        """plexus and dpsgd options, and the options that do not apply to them."""
        only = {"sample_size": ("plexus",), "topology": ("dpsgd",),
                "churn": ("plexus", "dpsgd")}
        for name, strategies in only.items():
            if getattr(self, name) is not None and self.strategy not in strategies:
                raise UsageError(f"--{name.replace('_', '-')} applies to --strategy "
                                 f"{' or '.join(strategies)} only, not {self.strategy}: "
                                 "leave it out")
        if not self.decentralized:
            return
        given = [n for n in ("split_point", "microbatches", "init_from")
                 if getattr(self, n) is not None] + (["dp"] if self.dp else [])
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} does not apply to --strategy "
                             f"{self.strategy}, which trains the whole model on every "
                             "node with no server part; leave it out")
        if self.sample_size is not None and self.sample_size < 1:
            raise UsageError(f"--sample-size must be at least 1, got {self.sample_size}")
        self.degree()   # checks --topology

    def degree(self) -> int:
        """dpsgd's neighbours per node from --topology: ring (2) or regular:K (K even)."""
        text = self.topology or "ring"
        if text == "ring":
            return 2
        kind, _, k = text.partition(":")
        if kind != "regular" or not k.isdigit() or int(k) < 2 or int(k) % 2:
            raise UsageError(f"--topology {text!r} is unknown; give ring, or regular:K "
                             "with an even K of at least 2 (e.g. regular:4)")
        return int(k)

    def decentral_options(self, devices: list[str], initial: list[str]) -> dict:
        """RunConfig.strategy_options of a plexus or dpsgd run on these devices (those in
        `initial` online at the start), checked against the fleet."""
        if not self.decentralized:
            return {}
        k = self.sample_size if self.sample_size is not None else max(1, (len(devices) + 1) // 2)
        if self.strategy == "plexus" and k > len(devices):
            raise UsageError(f"--sample-size {k} is more than the fleet's {len(devices)} "
                             f"devices; give 1..{len(devices)}")
        return {"sample_size": k if self.strategy == "plexus" else 0,
                "degree": self.degree() if self.strategy == "dpsgd" else 2,
                "initial": list(initial)}

    def _check_ecofed(self) -> None:
        """EcoFed's options, and the one input it cannot do without (README: EcoFed)."""
        from agents.quantize import SCHEMES

        given = [k for k in self.ECOFED_OPTIONS if getattr(self, k) is not None]
        if self.strategy != "ecofed":
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} applies to --strategy "
                                 f"ecofed only, not {self.strategy}: leave it out")
            return
        if self.quantize is not None and self.quantize not in SCHEMES:
            raise UsageError(f"--quantize {self.quantize!r} is unknown; choose one of: "
                             f"{', '.join(SCHEMES)}")
        for name in ("replay_period", "replay_buffer_mb"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, "
                                 f"got {getattr(self, name)}")
        warmup = self.warmup_rounds or 0
        if warmup < 0 or warmup >= self.rounds:
            raise UsageError(f"--warmup-rounds {warmup} must be 0..{self.rounds - 1}: at "
                             f"least one of the {self.rounds} --rounds must be ecofed's")
        if (self.device_init is None) == (warmup == 0):
            raise UsageError("--strategy ecofed freezes pre-trained device blocks: give "
                             "--device-init FILE.safetensors (e.g. runs/RUN_ID/"
                             "model.safetensors of an fl run) or --warmup-rounds R (R "
                             "rounds of fl first), exactly one of them")

    def ecofed_options(self) -> dict:
        """RunConfig.strategy_options of an ecofed run, the defaults filled in."""
        if self.strategy != "ecofed":
            return {}
        from agents.strategies.ecofed import DEFAULT_BUFFER_MB

        return {"device_init": self.device_init, "warmup_rounds": self.warmup_rounds or 0,
                "quantize": self.quantize or "int8", "replay_period": self.replay_period or 1,
                "replay_buffer_mb": self.replay_buffer_mb or DEFAULT_BUFFER_MB}

    def _check_planning_limits(self) -> None:
        if self.split_point == 0 and not self.allow_raw_upload:
            raise UsageError("--split-point 0 puts every block on the server, so raw samples "
                             "would leave the devices; choose a split point of 1 or more, or "
                             "add --allow-raw-upload to allow it")
        if self.strategy == "fl" and self.split_point is not None:
            raise UsageError("--split-point does not apply to --strategy fl, which trains the "
                             "whole model on every device; leave it out")
        if self.strategy == "ecofed" and self.split_point == block_count_of(self.model):
            raise UsageError(f"--split-point {self.split_point} leaves ecofed's server nothing "
                             f"to train; choose 1..{self.split_point - 1}")
        if self.strategy != "pipar" and self.microbatches is not None:
            raise UsageError(f"--microbatches does not apply to --strategy {self.strategy}, "
                             "which runs one mini-batch at a time; leave it out or use pipar")
        for name in ("min_split_point", "max_microbatches"):
            if getattr(self, name) is not None and self.strategy != "pipar":
                raise UsageError(f"--{name.replace('_', '-')} limits what pipar's plan may "
                                 f"choose; --strategy {self.strategy} makes no plan")
        if self.adapt and self.strategy != "pipar":
            raise UsageError(f"--adapt re-plans pipar's placements between rounds; "
                             f"--strategy {self.strategy} makes no plan")
        if self.adapt and self.split_point is not None and self.microbatches is not None:
            raise UsageError("--adapt re-plans what --split-point and --microbatches leave "
                             "open, and both are fixed; leave one out")
        if self.calibrate and self.strategy != "pipar":
            _refuse_calibrate(f"it trains {self.strategy}")
        if self.calibrate and self.split_point is not None and self.microbatches is not None:
            _refuse_calibrate("--split-point and --microbatches fix its placement")
        if self.uncalibrated and self.calibrate:
            raise UsageError("--uncalibrated plans from the profiles as measured and "
                             "--calibrate from calibrated ones; choose one")
        if self.uncalibrated and self.strategy not in ("pipar", "ecofed"):
            raise UsageError(f"--uncalibrated chooses the profiles a pipar or ecofed plan is "
                             f"made from; --strategy {self.strategy} makes no plan")
        if self.uncalibrated and self.split_point is not None and \
                (self.microbatches is not None or self.strategy == "ecofed"):
            raise UsageError("--uncalibrated chooses the profiles a plan is made from, and "
                             "this run's placement is fixed (--split-point"
                             f"{' and --microbatches' if self.strategy == 'pipar' else ''}); "
                             "leave out --uncalibrated")
        if self.max_microbatches is not None and self.max_microbatches < 1:
            raise UsageError(f"--max-microbatches must be at least 1, "
                             f"got {self.max_microbatches}")
        if self.min_split_point is not None and self.min_split_point < 0:
            raise UsageError(f"--min-split-point must be 0 or more, got {self.min_split_point}")

    def _check_resilience(self) -> None:
        if self.min_devices < 1:
            raise UsageError(f"--min-devices must be at least 1, got {self.min_devices}")
        if self.heartbeat_timeout <= 0:
            raise UsageError(f"--heartbeat-timeout must be positive (seconds), "
                             f"got {self.heartbeat_timeout}")
        if self.rejoin_attempts < 0:
            raise UsageError(f"--rejoin-attempts must be 0 or more, got {self.rejoin_attempts}")
    def _check_privacy(self) -> None:
        given = [n for n in _DP_OPTIONS if getattr(self, n) is not None]
        if given and not self.dp:
            raise UsageError(f"--{given[0].replace('_', '-')} applies with --dp only; add --dp "
                             "or leave it out")
        if self.dp and self.strategy == "ecofed":
            raise UsageError("--dp with --strategy ecofed is not supported yet (its device "
                             "part is frozen, its server part replays kept activations); use "
                             "--dp with fl, split or pipar")
        if self.dp and self.batch_norm:
            raise UsageError("--dp cannot train batch-norm layers (a sample's gradient would "
                             "depend on the rest of its batch, so it cannot be clipped alone); "
                             "add --no-batch-norm")
        for name in ("dp_noise_multiplier", "dp_max_grad_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got "
                                 f"{getattr(self, name)}")
        if self.dp_delta is not None and not 0 < self.dp_delta < 1:
            raise UsageError(f"--dp-delta must be between 0 and 1 (below 1 / the samples per "
                             f"device), got {self.dp_delta}")
        if self.dp_noise_seed is not None and self.dp_noise_seed < 0:
            raise UsageError(f"--dp-noise-seed must be 0 or more, got {self.dp_noise_seed}")

    def dp_settings(self) -> DPSettings | None:
        """What --dp and its options give every agent; None without --dp."""
        if not self.dp:
            return None
        given = {n.removeprefix("dp_"): getattr(self, n) for n in _DP_OPTIONS}
        return DPSettings(**{k: v for k, v in given.items() if v is not None})

    def _check_optimizer(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r} is unknown; choose one of: "
                             f"{', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr-schedule {self.lr_schedule!r} is unknown; choose one of: "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.momentum is not None and self.optimizer != "sgd":
            raise UsageError(f"--momentum applies to --optimizer sgd only; {self.optimizer} "
                             "keeps its own moment estimates: leave --momentum out")
        for name in ("lr_step_rounds", "lr_gamma"):
            if getattr(self, name) is not None and self.lr_schedule != "step":
                raise UsageError(f"--{name.replace('_', '-')} applies to --lr-schedule step "
                                 f"only, not {self.lr_schedule}: leave it out")
        for name in ("momentum", "weight_decay"):
            if (getattr(self, name) or 0) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, "
                                 f"got {getattr(self, name)}")
        if self.lr_step_rounds is not None and self.lr_step_rounds < 1:
            raise UsageError(f"--lr-step-rounds must be at least 1, got {self.lr_step_rounds}")
        if self.lr_gamma is not None and self.lr_gamma <= 0:
            raise UsageError(f"--lr-gamma must be positive, got {self.lr_gamma}")

    def _check_model(self) -> None:
        from partitions.catalog import catalog_block_count as block_count
        from partitions.catalog import catalog_model_names as model_names

        if self.model not in model_names():
            raise UsageError(f"--model {self.model!r} is unknown; choose one of: "
                             f"{', '.join(model_names())}")
        if self.split_point is not None:
            blocks = block_count(self.model)
            if not 0 <= self.split_point <= blocks:
                raise UsageError(f"--split-point {self.split_point} is out of range for "
                                 f"{self.model}: choose 0..{blocks} (0: all on the server, "
                                 f"{blocks}: all on the device)")

    def as_run_fields(self) -> dict:
        """The fields every agent's RunConfig carries (not the planner's limits), with the
        optimizer's defaults filled in."""
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("min_split_point", "max_microbatches", "adapt", "calibrate",
                               "uncalibrated", "link_pacing",
                               "rejoin_attempts",
                               "init_from", *_DP_OPTIONS, *self.ECOFED_OPTIONS,
                               *self.DECENTRAL_OPTIONS)}
        defaults = {"momentum": 0.9 if self.optimizer == "sgd" else 0.0,
                    "lr_step_rounds": 1, "lr_gamma": 0.1}
        return fields | {k: v for k, v in defaults.items() if fields[k] is None} | \
            {"dp": self.dp_settings(), "strategy_options": self.ecofed_options()}


def _refuse_calibrate(why: str) -> None:
    raise UsageError(f"--calibrate calibrates the profiles a pipar plan is made from, and this "
                     f"run makes no pipar plan ({why}); leave out --calibrate, or run "
                     "`edgectl profile --calibrate`")


_DP_OPTIONS = ("dp_noise_multiplier", "dp_max_grad_norm", "dp_delta", "dp_noise_seed")


def check_local_dataset(options: TrainOptions, fleet) -> None:
    """The dataset's files on the hosts that are this machine (the built-in local fleet),
    found before any agent starts or torch is imported: a --data-dir without them is
    answered at once, naming where it looked. SSH hosts check their own when they start."""
    from agents.dataset_files import check_dataset

    for host in fleet.hosts:
        if host.is_local:
            check_dataset(options.dataset, host.data_dir or options.data_dir)
