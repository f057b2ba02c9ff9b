"""Stages: the computation on each side of a split, with no notion of order or network.

A `DeviceStage` runs blocks [0, p) on micro-batches and keeps each forward's output until
its gradient comes back. A `ServerStage` runs blocks [p, L) on one device's activations,
returning the gradient to send back. Each owns its optimizer (the run's choice, built afresh
each round with that round's learning rate); `step` applies the gradients accumulated over
a mini-batch's micro-batches.

Note (exactness): the loss of micro-batch i is weighted by n_i / B, its share of the
mini-batch, so the gradients summed over the N micro-batches equal the gradient of the
mini-batch's mean loss; for even splits that is the 1/N of PiPar. Without batch-norm in
train mode, fl, split and pipar therefore compute the same update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd as functional_sgd

from agents.config import OptimizerSettings


def make_optimizer(module: nn.Module, settings: OptimizerSettings, *,
                   wrappable: bool = False) -> torch.optim.Optimizer | FunctionalSGD | None:
    """The optimizer of a stage's trainable parameters, or None when it has none.
    `wrappable`: a torch.optim.Optimizer even for sgd, for Opacus to wrap (DP stages)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    if settings.name == "sgd":
        if not wrappable:
            return FunctionalSGD(params, settings)
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[settings.name]
    return optimizer(params, lr=settings.lr, weight_decay=settings.weight_decay)


class FunctionalSGD:
    """torch.optim.SGD's update, computed by the function it calls (torch.optim.sgd.sgd,
    public), without the Optimizer class around it: that class's first step imports
    torch's compiler stack (torch._dynamo), 1 s of CPU on this host and about 10 s on a
    0.1-core device, for nothing in an eager run. Same function, same arguments and
    defaults: the weights are bit-identical to torch.optim.SGD's
    (tests/unit/test_optimizers.py)."""

    def __init__(self, params: list[torch.Tensor], settings: OptimizerSettings):
        self.params, self.settings = params, settings
        self.momentum_buffers: dict[int, torch.Tensor | None] = {}

    @torch.no_grad()
    def step(self) -> None:
        stepped = [p for p in self.params if p.grad is not None]   # as SGD skips them
        buffers = [self.momentum_buffers.get(id(p)) for p in stepped]
        functional_sgd(stepped, [p.grad for p in stepped], buffers,
                       weight_decay=self.settings.weight_decay,
                       momentum=self.settings.momentum, lr=self.settings.lr, dampening=0.0,
                       nesterov=False, maximize=False)
        if self.settings.momentum != 0:
            self.momentum_buffers.update(zip(map(id, stepped), buffers, strict=True))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()


def warm_up_optimizer(settings: OptimizerSettings, wrappable: bool = False) -> None:
    """Take one step of the run's optimizer on a throwaway tensor: torch.optim's first step
    in a process imports torch's compiler stack (0.8-1.5 s here), which must land in an
    agent's loading (overlapping its connection), not in a timed round. (The plain sgd of
    a run without DP never imports it: `FunctionalSGD`.)"""
    dummy = nn.Linear(1, 1)
    dummy.weight.grad, dummy.bias.grad = torch.ones(1, 1), torch.ones(1)
    make_optimizer(dummy, settings, wrappable=wrappable).step()


class DeviceStage:
    wrappable_optimizer = False   # DP stages wrap theirs in Opacus's (agents.privacy)

    def __init__(self, part: nn.Module, optimizer: OptimizerSettings):
        self.part = part
        self.optimizer = make_optimizer(part, optimizer, wrappable=self.wrappable_optimizer)
        self._outputs: dict[int, torch.Tensor] = {}

    def forward(self, mb: int, x: torch.Tensor) -> torch.Tensor:
        """Run the device part; returns the activation to send (detached from the graph)."""
        out = self.part(x)
        self._outputs[mb] = out
        return out.detach()

    def backward(self, mb: int, grad: torch.Tensor) -> None:
        out = self._outputs.pop(mb)
        if out.requires_grad:
            out.backward(grad)

    def local_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward, loss and backward of the whole model on the device (classic FL)."""
        loss = F.cross_entropy(self.part(x), y)
        loss.backward()
        return loss.item()

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Release what the stage attached to its part at the round's end (a private
        stage's hooks, agents.privacy); plain training attaches nothing."""


class ServerStage:
    """Blocks [p, L) for one device. At p = 0 they read the data itself, whose gradient
    nobody wants: `input_grad` False skips computing it (the first conv's backward to its
    input), and train_microbatch returns None for it."""

    wrappable_optimizer = False

    def __init__(self, part: nn.Module, optimizer: OptimizerSettings, input_grad: bool = True):
        self.part, self.input_grad = part, input_grad
        self.optimizer = make_optimizer(part, optimizer, wrappable=self.wrappable_optimizer)

    def train_microbatch(self, x: torch.Tensor, y: torch.Tensor,
                         weight: float) -> tuple[torch.Tensor | None, float]:
        """Forward and backward one micro-batch; returns (activation gradient, loss)."""
        x = x.detach().requires_grad_(self.input_grad)
        loss = F.cross_entropy(self.part(x), y)
        (loss * weight).backward()
        return x.grad, loss.item()

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Release what the stage attached to its part at the round's end (a private
        stage's hooks, agents.privacy); plain training attaches nothing."""


def evaluate(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, batch_size: int = 500,
             map_batches: Callable[[Callable, list], list] | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` on already-normalized inputs, in inference mode.

    `map_batches(fn, items)` may run fn over the test batches in parallel (the server's
    workers); the model is only read, in eval mode, so the batches are independent."""
    was_training = model.training
    model.eval()
    batches = [(xs[i:i + batch_size], ys[i:i + batch_size])
               for i in range(0, len(xs), batch_size)]
    try:
        results = (map_batches or _map)(functools.partial(_evaluate_batch, model), batches)
    finally:
        model.train(was_training)
    n = max(len(xs), 1)
    return sum(loss for loss, _ in results) / n, sum(c for _, c in results) / n


@torch.inference_mode()
def _evaluate_batch(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    out = model(x)
    return F.cross_entropy(out, y, reduction="sum").item(), (out.argmax(1) == y).sum().item()


def _map(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def weighted_average(states: list[dict[str, torch.Tensor]],
                     weights: list[float]) -> dict[str, torch.Tensor]:
    """FedAvg: floating tensors averaged by weight; integer ones (BN counters) from the first."""
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key] * (w / total) for s, w in zip(states, weights, strict=True))
        else:
            out[key] = first.clone()
    return out
