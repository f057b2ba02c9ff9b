"""EcoFed: frozen pre-trained device blocks, 8-bit activations up, nothing down, replay.

Blocks [0, p) start from pre-trained weights and stay frozen, so no gradient ever travels
down and the device never runs a backward pass; it forwards each mini-batch in inference
mode (batch-norm on its running statistics, which stay as they were), quantizes the
activation (agents.quantize) and streams it up without waiting for anything. It uploads no
weights. The server trains its copy of blocks [p, L) per device on the activations, and
only those blocks are averaged.

Rounds. With `warmup_rounds` R, rounds 1..R are fl (the whole model on every device,
FedAvg); round R + 1 freezes the averaged device blocks and sends them down once. Without
warm-up the device blocks come from `device_init` (a model file, checked by
`device_init_state`) and travel down once, in round 1 (again to a device that comes back
from scratch: a restarted agent, or every device of a resumed run). Ecofed round e = r - R
(from 1) is an upload round when (e - 1) % K == 0 (K = replay_period): devices send fresh
activations, which the server trains on as they arrive and, when K > 1, keeps in its replay
buffer (agents.replay). In the other rounds devices do no work and the server trains its part on
the kept activations, each kept mini-batch once.

The fleet shares one frozen device part, so every device runs at the same split point.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agents.config import DeviceSpec, OptimizerSettings, RunConfig
from agents.errors import AgentError
from agents.events import EventSink
from agents.quantize import SCHEMES, QuantError, bytes_per_value, dequantize, quantize
from agents.replay import Kept, ReplayBuffer, budget_error, buffer_bytes
from agents.schedule import Action, local_schedule, pipeline_schedule
from agents.strategies.base import (
    DeviceSide,
    Placement,
    ServerSide,
    Strategy,
    checked_split_point,
)

if TYPE_CHECKING:   # torch is imported where it runs: the command line reads this module
    import torch
    from torch import nn

    from agents.wire import Frame

DEFAULT_BUFFER_MB = 512.0
INIT_HINT = ("give the model.safetensors of a run of the same model, e.g. "
             "runs/RUN_ID/model.safetensors of an fl run (README: EcoFed)")


@dataclass(frozen=True)
class EcoFedSettings:
    """The run's ecofed options (RunConfig.strategy_options), checked on construction."""

    device_init: str | None = None     # a model file on the server's host
    warmup_rounds: int = 0
    quantize: str = "int8"
    replay_period: int = 1
    replay_buffer_mb: float = DEFAULT_BUFFER_MB

    @classmethod
    def of(cls, run: RunConfig) -> EcoFedSettings:
        try:
            settings = cls(**run.strategy_options)
        except TypeError as e:
            raise AgentError(f"run config: ecofed options {sorted(run.strategy_options)}: "
                             f"{e}") from None
        settings.check(run.rounds)
        return settings

    def check(self, rounds: int) -> None:
        if self.quantize not in SCHEMES:
            raise AgentError(f"ecofed: quantize {self.quantize!r}, choose one of "
                             f"{', '.join(SCHEMES)}")
        if self.replay_period < 1 or self.warmup_rounds < 0 or not self.replay_buffer_mb > 0:
            raise AgentError("ecofed: replay_period must be >= 1, warmup_rounds >= 0 and "
                             "replay_buffer_mb > 0")
        if self.warmup_rounds >= rounds:
            raise AgentError(f"ecofed: {self.warmup_rounds} warm-up rounds leave none of "
                             f"the {rounds} rounds to ecofed")
        if (self.device_init is None) == (self.warmup_rounds == 0):
            raise AgentError("ecofed: the frozen device blocks come from device_init or "
                             "from warmup_rounds of fl: give exactly one")

    def warming_up(self, r: int) -> bool:
        return r <= self.warmup_rounds

    def uploads(self, r: int) -> bool:
        """Whether round r (not a warm-up round) is an upload round."""
        return (r - self.warmup_rounds - 1) % self.replay_period == 0

    def freezes(self, r: int) -> bool:
        """Round r is the first ecofed round: the device blocks travel down, once."""
        return r == self.warmup_rounds + 1

    def to_json(self) -> dict:
        return asdict(self)


class EcoFed(Strategy):
    name = "ecofed"
    summary = ("frozen pre-trained device blocks, 8-bit activations up, no gradient down, "
               "server replay")

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        p = checked_split_point(spec, num_blocks)
        if p == num_blocks:
            raise AgentError(f"device {spec.name}: ecofed at split point {p} leaves the "
                             f"server nothing to train; choose 1..{num_blocks - 1}")
        return Placement(split_point=p, microbatches=1)

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        if placement.split_point == num_blocks:   # a warm-up round: fl
            return local_schedule()
        return pipeline_schedule(1, backward=False)

    def server_side(self, run: RunConfig) -> EcoFedServer:
        return EcoFedServer(self, run)

    def device_side(self, run: RunConfig) -> EcoFedDevice:
        return EcoFedDevice(self, run)


def fleet_split_point(run: RunConfig) -> int:
    """The one split point of an ecofed fleet (see the module docstring)."""
    points = {d.split_point for d in run.devices}
    if len(points) != 1 or None in points:
        raise AgentError(f"ecofed freezes one device part for the whole fleet, but the "
                         f"devices run at split points {sorted(points, key=str)}; "
                         "give every device the same split point")
    return points.pop()


def device_init_state(path: str, model: nn.Module, p: int) -> dict[str, torch.Tensor]:
    """The tensors of blocks [0, p) of `model` from the model file at `path`: every one
    present with its shape and dtype (a one-line AgentError otherwise). An edgectl model
    file must also name the same model; the input size and the classes may differ (only
    the device blocks are read)."""
    from safetensors import SafetensorError, safe_open

    from partitions.parts import split

    where = f"--device-init {path}"
    if not Path(path).is_file():
        raise AgentError(f"{where}: no such file; {INIT_HINT}")
    device_part = split(model, p)[0]
    wanted = device_part.state_dict()
    prefixes = tuple(f"blocks.{name}." for name in device_part.block_names)
    try:
        with safe_open(path, "pt") as f:
            named = (f.metadata() or {}).get("model")
            if named is not None and named != model.name:
                raise AgentError(f"{where} holds a {named} model, this run trains "
                                 f"{model.name}; {INIT_HINT}")
            keys = set(f.keys())
            missing = [k for k in wanted if k not in keys]
            extra = sorted(k for k in keys if k.startswith(prefixes) and k not in wanted)
            if missing or extra:
                first = (f"{len(missing)} tensors missing, first {missing[0]!r}" if missing
                         else f"{len(extra)} tensors it lacks, first {extra[0]!r}")
                raise AgentError(f"{where}: its blocks do not match {model.name}'s blocks "
                                 f"[0, {p}): {first} (another batch-norm setting?); "
                                 f"{INIT_HINT}")
            state = {k: f.get_tensor(k) for k in wanted}
    except (SafetensorError, OSError) as e:
        raise AgentError(f"{where} is not a safetensors file ({e}); {INIT_HINT}") from None
    for key, tensor in state.items():
        if tensor.shape != wanted[key].shape or tensor.dtype != wanted[key].dtype:
            raise AgentError(f"{where}: its blocks do not match {model.name}'s: {key} is "
                             f"{tuple(tensor.shape)} {tensor.dtype} in the file, "
                             f"{tuple(wanted[key].shape)} {wanted[key].dtype} in the model "
                             f"(another input shape or batch-norm setting?); {INIT_HINT}")
    return state


def replay_buffer_need(model: nn.Module, run: RunConfig, samples: dict[str, int]) -> int:
    """Bytes the replay buffers of every device take: each keeps one round of its
    mini-batches (`samples`: each device's shard size)."""
    from partitions.facts import split_points

    settings = EcoFedSettings.of(run)
    p = fleet_split_point(run)
    values = math.prod(split_points(model)[p].output_shape)
    per_round = {name: min(n // run.batch_size, run.max_batches or n) * run.batch_size
                 for name, n in samples.items()}
    return sum(buffer_bytes(values, bytes_per_value(settings.quantize), n)
               for n in per_round.values())


def check_replay_budget(model: nn.Module, run: RunConfig, samples: dict[str, int]) -> None:
    """Refuse, in one line, a run whose replay buffers exceed replay_buffer_mb."""
    settings = EcoFedSettings.of(run)
    if settings.replay_period == 1:
        return   # every round uploads: nothing is kept
    needed = replay_buffer_need(model, run, samples)
    p, n = fleet_split_point(run), len(samples)
    error = budget_error(needed, settings.replay_buffer_mb,
                         f"{n} device(s), one round of mini-batches each, "
                         f"{settings.quantize} activations at p={p}")
    if error:
        raise AgentError(error)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes, in name order: what a device
    reports of its frozen blocks every round, so the server can tell they never moved."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().reshape(-1)
        digest.update(key.encode() + b"\0" + str(tensor.dtype).encode() + b"\0")
        digest.update(tensor.view(-1).cpu().numpy().tobytes())
    return digest.hexdigest()


class FrozenStage:
    """The device part, frozen: forwards in inference mode, never steps."""

    def __init__(self, part: nn.Module):
        self.part = part.eval()
        self.part.requires_grad_(False)

    def forward(self, mb: int, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.part(x)

    def backward(self, mb: int, grad: torch.Tensor) -> None:
        raise AgentError("ecofed: a frozen device part runs no backward pass")

    def step(self) -> None:
        pass

    def close(self) -> None:
        pass   # it holds nothing to release (a private stage does: agents.privacy)


class EcoFedDevice(DeviceSide):
    def __init__(self, strategy: Strategy, run: RunConfig):
        super().__init__(strategy, run)
        self.settings = EcoFedSettings.of(run)
        self.frozen = False
        self.error = QuantError()

    def stage(self, meta: dict, device_part: nn.Module, optimizer: OptimizerSettings):
        self.frozen, self.error = bool(meta.get("frozen")), QuantError()
        return FrozenStage(device_part) if self.frozen else \
            super().stage(meta, device_part, optimizer)

    def schedule(self, meta: dict, placement: Placement, num_blocks: int) -> list[Action]:
        if self.frozen and not meta.get("upload"):
            return []   # a replay round: the server trains on what it kept
        return super().schedule(meta, placement, num_blocks)

    def encode(self, activation: torch.Tensor) -> tuple[dict, dict]:
        codes, quant = quantize(activation, self.settings.quantize)
        self.error.add(activation, codes, quant)
        return {"x": codes}, ({"quant": quant} if quant else {})

    def round_end(self, device_part: nn.Module) -> tuple[dict, dict]:
        if not self.frozen:
            return super().round_end(device_part)
        extra = {"frozen_digest": state_digest(device_part.state_dict())}
        return {}, extra | ({"quant_error": self.error.to_json()} if self.error.values else {})


class EcoFedServer(ServerSide):
    def __init__(self, strategy: Strategy, run: RunConfig):
        super().__init__(strategy, run)
        self.settings = EcoFedSettings.of(run)
        self.split_point = fleet_split_point(run)
        self.buffers = {d.name: ReplayBuffer() for d in run.devices}
        self.errors: dict[str, dict] = {}
        self.frozen: set[str] = set()
        self.digest = ""   # of the frozen blocks, as sent down
        self.unfrozen: set[str] = set()   # devices that have not received the frozen blocks

    def prepare(self, model: nn.Module) -> None:
        if self.settings.device_init:
            model.load_state_dict(device_init_state(self.settings.device_init, model,
                                                    self.split_point), strict=False)

    def check_fleet(self, model: nn.Module, samples: dict[str, int]) -> None:
        check_replay_budget(model, self.run, samples)

    def device_joined(self, device: str) -> None:
        self.unfrozen.add(device)   # a device back from scratch needs the frozen blocks again

    def placement(self, r: int, placement: Placement, num_blocks: int) -> Placement:
        return Placement(num_blocks, 1) if self.settings.warming_up(r) else placement

    def round_start(self, r: int, device: str, placement: Placement,
                    device_part: nn.Module) -> tuple[dict, dict]:
        if self.settings.warming_up(r):
            return super().round_start(r, device, placement, device_part)
        upload = self.settings.uploads(r)
        if upload:
            self.buffers[device].clear()
        state = device_part.state_dict()
        self.frozen = set(state)
        send = device in self.unfrozen   # the first ecofed round, or back after a loss
        if send:
            self.unfrozen.discard(device)
            self.digest = state_digest(state)   # the same whenever sent: nothing moves them
        return {"frozen": True, "upload": upload}, (state if send else {})

    def wants_gradient(self, r: int, placement: Placement) -> bool:
        return False   # warm-up rounds are fl, which has no server part

    def activation(self, r: int, device: str, frame: Frame) -> torch.Tensor:
        quant = frame.meta.get("quant")
        try:
            x = dequantize(frame.tensors["x"], quant)
        except ValueError as e:
            raise AgentError(f"device {device}: {e}") from None
        if self.settings.replay_period > 1:
            meta = frame.meta
            self.buffers[device].keep(Kept(int(meta["batch"]), int(meta["mb"]),
                                           frame.tensors["x"], quant, frame.tensors["y"],
                                           float(meta["weight"])))
        return x

    def upload(self, r: int, device: str, frame: Frame) -> dict:
        if self.settings.warming_up(r):
            return super().upload(r, device, frame)
        if frame.tensors:
            raise AgentError(f"device {device} uploaded tensors of its frozen blocks")
        if frame.meta.get("frozen_digest") != self.digest:
            raise AgentError(f"device {device}: its frozen blocks changed in round {r} "
                             "(their digest is not the one sent down)")
        self.errors[device] = frame.meta.get("quant_error")
        return {}

    def after_round_end(self, r: int, session, sink: EventSink) -> None:
        if self.settings.warming_up(r) or self.settings.uploads(r):
            return
        stage = session.stage
        for batch in self.buffers[session.name].batches(self.run.seed, r):
            with sink.timed("server.compute", "replay", round_=r, batch=batch[0].batch,
                            device=session.name):
                for kept in batch:
                    _, loss = stage.train_microbatch(dequantize(kept.codes, kept.quant),
                                                     kept.labels, kept.weight)
                    session.loss_sum += loss * kept.weight
                    session.loss_weight += kept.weight
                stage.step()

    def frozen_keys(self, r: int) -> set[str]:
        return set() if self.settings.warming_up(r) else self.frozen

    def round_fields(self, r: int) -> dict:
        if self.settings.warming_up(r):
            return {"ecofed": {"phase": "warmup"}}
        upload = self.settings.uploads(r)
        return {"ecofed": {
            "phase": "upload" if upload else "replay", "quantize": self.settings.quantize,
            "replay_period": self.settings.replay_period, "frozen_digest": self.digest,
            "buffer_bytes": {d: b.nbytes for d, b in self.buffers.items()},
            "quantization_error": {d: e for d, e in self.errors.items() if e} if upload
            else {}}}
