"""Profile records: what edgectl knows about a host's compute and a device's link.

Two versioned JSON records (PROFILE_VERSION) that the measuring code writes, the profile
store keeps and the planner reads:

- `ComputeProfile`: for one host, one model at one input shape, each block's median
  forward and backward time at several batch sizes, each block's activation bytes and
  parameter count, the optimizer step cost, peak memory and the CPU it ran on.
- `LinkProfile`: for one device, throughput in both directions and the round-trip time
  to the server, measured over the agents' own protocol and port.

Compute does not scale linearly with batch size at small sizes, so times are measured at
several sizes and `ComputeProfile.forward_time` / `backward_time` interpolate piecewise
linearly between them (and extrapolate from the two nearest points outside them).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import asdict, dataclass, field

# 2: compute measured with the agents' allocator setting (profiles.host.keep_freed_memory),
# links by the probe that no longer polls; a version-1 record is stale and measured again
# 3: the zoo's max pooling runs through torch's channels-last kernel (partitions.layers),
# 12% off a VGG-5 step; compute measured before is stale
PROFILE_VERSION = 3


class ProfileFormatError(ValueError):
    """A profile record is malformed or of another version; the message says which."""


@dataclass(frozen=True)
class BlockTiming:
    name: str
    forward_s: tuple[float, ...]      # one per ComputeProfile.batch_sizes
    backward_s: tuple[float, ...]     # gradient w.r.t. params and input, same sizes
    activation_bytes: int             # per sample: this block's output, float32
    params: int
    forward_spread: tuple[float, ...] = ()    # per batch size: the repeats' range over their
    backward_spread: tuple[float, ...] = ()   # median (empty in profiles older than spreads)


@dataclass(frozen=True)
class ComputeProfile:
    host: str
    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    batch_sizes: tuple[int, ...]      # ascending
    blocks: tuple[BlockTiming, ...]
    input_bytes: int                  # per sample, float32
    step_s_per_param: float           # one SGD(momentum) step, per parameter
    peak_memory_bytes: int            # peak resident growth while measuring
    memory_available_bytes: int
    threads: int
    cpu: dict = field(default_factory=dict)      # model, cores, quota
    host_id: str = ""                 # identifies the machine behind the name
    measured_at: float = 0.0
    versions: dict = field(default_factory=dict)
    task_overhead_s: float = 0.0      # per compute task, from calibration runs (0: none)
    byte_overhead_s: float = 0.0      # per byte a server task moves, from calibration runs
    version: int = PROFILE_VERSION
    # a device agent's CPU seconds per micro-batch task beyond its stage's compute, as the
    # task probe measured it (agents.taskprobe); None: not probed (a server, an older record)
    agent_task_cpu_s: float | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def spread(self) -> float | None:
        """How noisy the profile is: the median, over every block and batch size, of the
        spread of its forward + backward time (weighted by those times); None for a
        profile older than spreads."""
        pairs = [(f * fs + b * bs, f + b) for blk in self.blocks
                 for f, b, fs, bs in zip(blk.forward_s, blk.backward_s, blk.forward_spread,
                                         blk.backward_spread, strict=False)]
        if not pairs:
            return None
        return sorted(w / t if t > 0 else 0.0 for w, t in pairs)[len(pairs) // 2]

    @property
    def usable_cores(self) -> int:
        """Cores an agent on this host may use, as `profiles.host.available_cores` counted
        them when profiling (affinity capped by quota); 1 when the record does not say."""
        cores, quota = self.cpu.get("cores") or 1, self.cpu.get("quota")
        return max(1, min(cores, round(quota))) if quota else cores

    def forward_time(self, block: int, batch: float) -> float:
        return _interpolate(self.batch_sizes, self.blocks[block].forward_s, batch)

    def backward_time(self, block: int, batch: float) -> float:
        return _interpolate(self.batch_sizes, self.blocks[block].backward_s, batch)

    def activation_bytes(self, split_point: int) -> int:
        """Bytes per sample crossing split point p (the input at p = 0)."""
        return self.input_bytes if split_point == 0 else \
            self.blocks[split_point - 1].activation_bytes

    def to_json(self) -> dict:
        return {"kind": "compute", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> ComputeProfile:
        _check(data, "compute")
        try:
            blocks = tuple(BlockTiming(**{**b, **{k: tuple(b.get(k) or ()) for k in (
                "forward_s", "backward_s", "forward_spread", "backward_spread")}})
                           for b in data["blocks"])
            fields = {k: v for k, v in data.items() if k not in ("kind", "blocks")}
            profile = cls(**{**fields, "blocks": blocks,
                             "input_shape": tuple(data["input_shape"]),
                             "batch_sizes": tuple(data["batch_sizes"])})
        except (KeyError, TypeError) as e:
            raise ProfileFormatError(f"compute profile is malformed: {e}") from e
        if any(len(b.forward_s) != len(profile.batch_sizes) or
               len(b.backward_s) != len(profile.batch_sizes) for b in blocks):
            raise ProfileFormatError("compute profile: a block has a time per batch size missing")
        return profile


@dataclass(frozen=True)
class LinkProfile:
    device: str
    server: str
    uplink_bps: float                 # device -> server, bits per second
    downlink_bps: float               # server -> device
    rtt_s: float
    probe_s: float                    # how long each direction was measured
    measured_at: float = 0.0
    version: int = PROFILE_VERSION

    def transfer_time(self, nbytes: float, uplink: bool) -> float:
        """Seconds to move `nbytes` one way: serialization plus half a round trip."""
        bps = self.uplink_bps if uplink else self.downlink_bps
        return nbytes * 8 / bps + self.rtt_s / 2

    def to_json(self) -> dict:
        return {"kind": "link", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> LinkProfile:
        _check(data, "link")
        try:
            return cls(**{k: v for k, v in data.items() if k != "kind"})
        except TypeError as e:
            raise ProfileFormatError(f"link profile is malformed: {e}") from e


def _check(data: object, kind: str) -> None:
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise ProfileFormatError(f"not a {kind} profile record")
    if data.get("version") != PROFILE_VERSION:
        raise ProfileFormatError(f"{kind} profile version {data.get('version')}, this edgectl "
                                 f"reads version {PROFILE_VERSION}; measure again with --refresh")


def _interpolate(xs: tuple[int, ...], ys: tuple[float, ...], x: float) -> float:
    """Piecewise-linear through (xs, ys); linear from the nearest two points outside them,
    never below zero. A single point scales proportionally."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = min(max(bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


def dumps(record: ComputeProfile | LinkProfile) -> str:
    return json.dumps(record.to_json(), indent=1)
