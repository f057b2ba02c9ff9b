"""Layers of the zoo's models that torch computes slowly as they come.

`MaxPool2d` is nn.MaxPool2d, pooled by torch's channels-last kernel on the CPU. torch's
kernel for NCHW tensors on the CPU does not vectorise: on this project's x86 host it took
16.4 ms to pool VGG-5's first activation at B = 100 (100 x 32 x 32 x 32, with the indices
training keeps) where the channels-last kernel, the two layout copies around it included,
took 10.7; forward and backward 20.3 against 13.4 ms, the second block's 10.1 against 4.2,
ResNet-18's 3x3 pool 55 against 32. A third of a VGG-5 step was max pooling.

Both kernels take the first maximum of a window in scan order (and the last NaN over any
number), so the values, the indices and therefore the gradients are the same, bit for bit,
and a model trains to the same weights either way (tests/unit/test_layers.py checks both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CHANNELS_LAST = torch.channels_last


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


class _PoolChannelsLast(torch.autograd.Function):
    """Max pooling of an NCHW tensor through the channels-last kernel; the backward is the
    NCHW one, fed the same indices autograd would have kept (itself differentiable, so a
    second derivative works as with nn.MaxPool2d)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: list[int], stride: list[int],
                padding: list[int], dilation: list[int], ceil_mode: bool) -> torch.Tensor:
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=_CHANNELS_LAST), kernel, stride, padding, dilation,
            ceil_mode)
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return pooled.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, *ctx.args, indices)
        return grad_x, None, None, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d; a contiguous 4-D floating-point CPU tensor is pooled in channels-last
    layout (see the module's docstring) and comes back contiguous. Anything else (a tensor
    already channels-last, another device or layout, return_indices) goes the usual way.
    Not for torch.func's transforms or forward-mode AD, which nothing here uses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.return_indices or x.dim() != 4 or x.device.type != "cpu"
                or x.layout != torch.strided
                or not x.is_floating_point() or not x.is_contiguous()
                or x.is_contiguous(memory_format=_CHANNELS_LAST)):   # C = 1, or 1x1 maps
            return super().forward(x)
        stride = self.stride if self.stride is not None else self.kernel_size
        args = (_pair(self.kernel_size), _pair(stride), _pair(self.padding),
                _pair(self.dilation), self.ceil_mode)
        if torch.is_grad_enabled() and x.requires_grad:
            return _PoolChannelsLast.apply(x, *args)
        return F.max_pool2d(x.contiguous(memory_format=_CHANNELS_LAST), *args).contiguous()
