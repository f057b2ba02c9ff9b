"""Differential privacy: sample-level DP-SGD on every part of the model, and its accountant.

Built on Opacus: its GradSampleModule computes per-sample gradients, its DPOptimizer clips
them and adds Gaussian noise, its RDP accountant turns the steps into (epsilon, delta).
Opacus is imported only here and only when a run asks for DP (`require_opacus`), so hosts
that never train with --dp need not install it.

Note (the mechanism, and why the accountant is Opacus's plain one):

- Per-sample gradients. A part backs the *sum* of its samples' losses, so each sample's
  gradient is its own; the DPOptimizer clips each, sums, adds noise and divides by B. On a
  split, the server's activation gradient for sample j is d loss_j / d a_j, so the device's
  per-sample gradients follow from it through its own backward (Opacus's hooks).
- Micro-batches. The N micro-batches of a mini-batch each add their samples' gradients to
  the part's per-sample gradients (Opacus keeps one tensor per backward); `PrivateOptimizer`
  joins them into the mini-batch's B rows before clipping, so every sample is clipped once
  and the noise is drawn once per step: N changes neither the update nor the guarantee.
  Opacus's hooks keep one stack of activations per layer, which a pipeline (all forwards,
  then the backwards in order) would pair with the wrong micro-batch; so a private device
  running N > 1 recomputes each micro-batch's forward at its backward (as activation
  checkpointing does), and Opacus sees forward-then-backward, as it expects.
- Clipping per part. A sample's gradient over the whole model is (g_device, g_server), but
  the two live on different hosts: clipping the joint vector would need each sample's
  norms sent across every step and the server's step held until the device's backward.
  Each of the k parts with parameters instead clips its share to C / sqrt(k) and adds noise
  of standard deviation sigma * C, so the joint clipped gradient has norm at most C and
  every coordinate gets noise sigma * C: exactly DP-SGD on the whole model with clipping
  norm C and noise multiplier sigma (the accountant's sigma). Opacus's per-layer clipping
  splits its norm the same way. fl (k = 1) is plain DP-SGD.
- Accounting. A sample lives on one device, and only that device's updates (its part on
  the device and its copy of the server part) touch it; FedAvg of the copies is
  post-processing. So each device has its own accountant: sample rate q = B / shard size,
  one step per mini-batch, and the run's epsilon is the largest. Batches are fixed-size
  shuffles, not Poisson samples; Opacus accounts them the same way (sample rate 1 /
  batches) when it runs without Poisson sampling, and the README says so.
"""

from __future__ import annotations

import copy
import math
import secrets
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.config import DPSettings, OptimizerSettings, RunConfig
from agents.errors import AgentError
from agents.stage import DeviceStage, ServerStage
from partitions.parts import split
from partitions.zoo import BlockModel

ACCOUNTANT = "rdp"
DEVICE_PART, SERVER_PART = 0, 1

# The device part's input (the data) needs no gradient, and torch says so on every backward.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are "
                        "computed with respect to module outputs")


def require_opacus():
    """The opacus module, or a one-line error saying how to install it."""
    try:
        import opacus
    except ImportError:
        raise AgentError("--dp needs opacus, which this host lacks: run `edgectl provision "
                         "--dp` (or pip install 'edgectl[dp]')") from None
    return opacus


def trainable_parts(model: BlockModel, split_point: int) -> int:
    """k: how many of the two parts at this split point have parameters to train."""
    return sum(any(p.requires_grad for p in part.parameters())
               for part in split(model, split_point))


def noise_generator(dp: DPSettings, round_: int, device_index: int,
                    part: int) -> torch.Generator:
    """Where one part's noise comes from in one round: from the OS's randomness, or (tests)
    derived from dp.noise_seed, different for every round, device and part."""
    generator = torch.Generator()
    if dp.noise_seed is None:
        return generator.manual_seed(secrets.randbits(63))
    seed = np.random.SeedSequence([dp.noise_seed, round_, device_index, part])
    return generator.manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))


class PrivateOptimizer:
    """One part's optimizer under DP-SGD (see the Note): the part's per-sample gradients
    from Opacus's hooks, clipped to C / sqrt(k) and noised with sigma * C by its
    DPOptimizer around the run's own optimizer, averaged over B. `close` takes the hooks
    off again: the part's modules outlive the round."""

    def __init__(self, part: nn.Module, base: torch.optim.Optimizer, dp: DPSettings,
                 parts: int, batch_size: int, generator: torch.Generator):
        opacus = require_opacus()
        from opacus.optimizers import DPOptimizer

        self.module = opacus.GradSampleModule(part, batch_first=True, loss_reduction="sum",
                                              strict=True)
        self.optimizer = DPOptimizer(base, noise_multiplier=dp.noise_multiplier * math.sqrt(parts),
                                     max_grad_norm=dp.max_grad_norm / math.sqrt(parts),
                                     expected_batch_size=batch_size, loss_reduction="mean",
                                     generator=generator)

    def step(self) -> None:
        """Join the micro-batches' per-sample gradients into the mini-batch's, then clip,
        noise, average and step once."""
        for p in self.optimizer.params:
            if isinstance(p.grad_sample, list):
                p.grad_sample = torch.cat(p.grad_sample)
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def close(self) -> None:
        self.module.cleanup()


def _private(stage: DeviceStage | ServerStage, run: RunConfig, parts: int, round_: int,
             device_index: int, part: int) -> None:
    if stage.optimizer is not None:
        stage.optimizer = PrivateOptimizer(
            stage.part, stage.optimizer, run.dp, parts, run.batch_size,
            noise_generator(run.dp, round_, device_index, part))


class PrivateDeviceStage(DeviceStage):
    """A device stage under DP-SGD. With several micro-batches in flight it keeps each
    one's input and recomputes its forward at the backward (the Note says why)."""

    wrappable_optimizer = True

    def __init__(self, part: nn.Module, optimizer: OptimizerSettings, run: RunConfig, *,
                 parts: int, microbatches: int, round_: int, device_index: int):
        super().__init__(part, optimizer)
        _private(self, run, parts, round_, device_index, DEVICE_PART)
        self.recompute = microbatches > 1 and self.optimizer is not None

    def forward(self, mb: int, x: torch.Tensor) -> torch.Tensor:
        if not self.recompute:
            return super().forward(mb, x)
        with torch.no_grad():
            out = self.part(x)
        self._outputs[mb] = x
        return out

    def backward(self, mb: int, grad: torch.Tensor) -> None:
        if self.recompute:
            self._outputs[mb] = self.part(self._outputs[mb])
        super().backward(mb, grad)

    def local_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(self.part(x), y, reduction="sum")
        loss.backward()
        return loss.item() / len(y)

    def close(self) -> None:
        if isinstance(self.optimizer, PrivateOptimizer):
            self.optimizer.close()


class PrivateServerStage(ServerStage):
    """A server stage under DP-SGD: it backs the micro-batch's summed loss (its share of B
    is the DPOptimizer's business), so the activation gradient it returns is each sample's
    own, as the device's per-sample gradients need."""

    wrappable_optimizer = True

    def __init__(self, part: nn.Module, optimizer: OptimizerSettings, run: RunConfig, *,
                 parts: int, round_: int, device_index: int, input_grad: bool = True):
        super().__init__(part, optimizer, input_grad)
        _private(self, run, parts, round_, device_index, SERVER_PART)

    def train_microbatch(self, x: torch.Tensor, y: torch.Tensor,
                         weight: float) -> tuple[torch.Tensor | None, float]:
        x = x.detach().requires_grad_(self.input_grad)
        loss = F.cross_entropy(self.part(x), y, reduction="sum")
        loss.backward()
        return x.grad, loss.item() / len(y)

    def close(self) -> None:
        if isinstance(self.optimizer, PrivateOptimizer):
            self.optimizer.close()


def warm_up_private(model: BlockModel, run: RunConfig, x: torch.Tensor,
                    y: torch.Tensor) -> None:
    """Opacus's first per-sample gradients and DP step in a process are slow (0.2-1 s of
    lazy set-up here); pay for them untimed, on a throwaway copy of the model."""
    throwaway = copy.deepcopy(model).train()
    stage = PrivateDeviceStage(throwaway, run.optimizer_at(1), run, parts=1, microbatches=1,
                               round_=0, device_index=0)
    try:
        stage.local_step(x, y)
        stage.step()
    finally:
        stage.close()


class PrivacyAccountant:
    """Opacus's RDP accountant per device (the Note says why per device): q = B / the
    device's shard, one step per mini-batch it trained."""

    def __init__(self, dp: DPSettings, batch_size: int, shard_sizes: dict[str, int]):
        require_opacus()
        from opacus.accountants import RDPAccountant

        self.dp = dp
        self.sample_rates = {d: min(batch_size / n, 1.0) if n else 1.0
                             for d, n in shard_sizes.items()}
        self.steps = dict.fromkeys(shard_sizes, 0)
        self._accountants = {d: RDPAccountant() for d in shard_sizes}

    def record(self, device: str, steps: int) -> None:
        for _ in range(steps):   # consecutive equal steps are one history entry in Opacus
            self._accountants[device].step(noise_multiplier=self.dp.noise_multiplier,
                                           sample_rate=self.sample_rates[device])
        self.steps[device] += steps

    def epsilon_of(self, device: str) -> float:
        if not self.steps[device]:
            return 0.0
        return float(self._accountants[device].get_epsilon(delta=self.dp.delta))

    def to_json(self) -> dict:
        """What the round event and run.json record: the run's epsilon (the largest of the
        devices') for delta, and per device the sample rate and steps it came from."""
        devices = {d: {"sample_rate": q, "steps": self.steps[d], "epsilon": self.epsilon_of(d)}
                   for d, q in self.sample_rates.items()}
        return {"accountant": ACCOUNTANT, "epsilon": max(v["epsilon"] for v in devices.values()),
                "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
                "max_grad_norm": self.dp.max_grad_norm, "clipping": "per part",
                "devices": devices}
