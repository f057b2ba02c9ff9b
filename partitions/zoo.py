"""The model zoo: `BlockModel` (a network as an ordered list of named blocks) and its builders.

Owns the architectures (vgg5, vgg11, vgg16, resnet18, mobilenetv2, all CIFAR-style), the
registry `MODELS` and `build_model` (input shapes are parsed by `partitions.catalog`, without
torch). Every block boundary is a split point (see `partitions.parts`). Input channels,
image size and class count are parameters; layer sizes that depend on the image size are
found by a dry run, never typed by hand.
Models have no dropout and `batch_norm=False` swaps every BatchNorm for `nn.Identity`, so
training math is exact and comparable across strategies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from partitions.catalog import SHAPE_FORM, Shape
from partitions.errors import PartitionError
from partitions.layers import MaxPool2d

Blocks = list[tuple[str, nn.Module]]
Builder = Callable[[Shape, int, bool], Blocks]


class BlockModel(nn.Module):
    """A network whose forward pass runs its named blocks in order; any boundary can split it."""

    def __init__(self, name: str, input_shape: Shape, num_classes: int, blocks: Blocks):
        super().__init__()
        names = [block_name for block_name, _ in blocks]
        if len(set(names)) != len(names):
            raise PartitionError(f"block names of {name} are not unique: {names}")
        self.name = name
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.blocks = nn.ModuleDict(blocks)

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    def extra_repr(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return f"name={self.name}, input_shape={shape}, num_classes={self.num_classes}"


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block of code with `module` in eval mode and no autograd, then restore its modes."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def _output_shape(layers: Sequence[nn.Module], input_shape: Shape) -> tuple[int, ...]:
    """Per-sample output shape of `layers` applied in order, found by a dry run on zeros."""
    stack = nn.Sequential(*layers)
    with eval_mode(stack):
        return tuple(stack(torch.zeros(1, *input_shape)).shape[1:])


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv(cin: int, cout: int, batch_norm: bool, stride: int = 1, kernel: int = 3,
          groups: int = 1, act: type[nn.Module] | None = nn.ReLU, bias: bool = False) -> list:
    """Conv (same padding) + norm + activation, as a list of layers to splice into a block."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
    return [conv, _norm(cout, batch_norm)] + ([act()] if act else [])


def _classifier(features: Sequence[nn.Module], input_shape: Shape, hidden: int,
                num_classes: int) -> Blocks:
    """Two dense blocks fc1 (flatten+linear+relu, sized by a dry run of `features`) and fc2."""
    flat = 1
    for size in _output_shape(features, input_shape):
        flat *= size
    fc1 = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
    return [("fc1", fc1), ("fc2", nn.Sequential(nn.Linear(hidden, num_classes)))]


def _vgg5(input_shape: Shape, num_classes: int, batch_norm: bool) -> Blocks:
    """The VGG5 of FedAdapt/PiPar: conv32+pool, conv64+pool, conv64, dense 128, dense classes."""
    convs = [
        nn.Sequential(*_conv(input_shape[0], 32, batch_norm, bias=True), MaxPool2d(2)),
        nn.Sequential(*_conv(32, 64, batch_norm, bias=True), MaxPool2d(2)),
        nn.Sequential(*_conv(64, 64, batch_norm, bias=True)),
    ]
    blocks = [(f"conv{i + 1}", conv) for i, conv in enumerate(convs)]
    return blocks + _classifier(convs, input_shape, 128, num_classes)


_VGG_LAYERS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(layers: list, input_shape: Shape, num_classes: int, batch_norm: bool) -> Blocks:
    """CIFAR VGG: one block per conv (+ the pool after it), then a 512-wide two-layer classifier.

    Pools use ceil_mode so five of them shrink 28x28 to 1x1 just as they shrink 32x32.
    """
    convs: list[list[nn.Module]] = []
    cin = input_shape[0]
    for layer in layers:
        if layer == "M":
            convs[-1].append(MaxPool2d(2, ceil_mode=True))
        else:
            convs.append(_conv(cin, layer, batch_norm, bias=True))
            cin = layer
    modules = [nn.Sequential(*conv) for conv in convs]
    blocks = [(f"conv{i + 1}", module) for i, module in enumerate(modules)]
    return blocks + _classifier(modules, input_shape, 512, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool):
        super().__init__()
        self.body = nn.Sequential(*_conv(cin, cout, batch_norm, stride),
                                  *_conv(cout, cout, batch_norm, act=None))
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else nn.Sequential(
            *_conv(cin, cout, batch_norm, stride, kernel=1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _head(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _resnet18(input_shape: Shape, num_classes: int, batch_norm: bool) -> Blocks:
    """CIFAR ResNet-18: 3x3 stem without maxpool, 4 stages of 2 BasicBlocks, pooled linear head."""
    blocks: Blocks = [("stem", nn.Sequential(*_conv(input_shape[0], 64, batch_norm)))]
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for index in range(2):
            stride = 2 if stage > 1 and index == 0 else 1
            blocks.append((f"layer{stage}_{index}", BasicBlock(cin, cout, stride, batch_norm)))
            cin = cout
    return blocks + [("head", _head(512, num_classes))]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual if same shape."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int, batch_norm: bool):
        super().__init__()
        hidden = cin * expansion
        expand = _conv(cin, hidden, batch_norm, kernel=1, act=nn.ReLU6) if expansion > 1 else []
        self.body = nn.Sequential(
            *expand,
            *_conv(hidden, hidden, batch_norm, stride, groups=hidden, act=nn.ReLU6),
            *_conv(hidden, cout, batch_norm, kernel=1, act=None),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


# (expansion, output channels, repeats, stride of the first repeat); CIFAR strides.
_MOBILENETV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _mobilenetv2(input_shape: Shape, num_classes: int, batch_norm: bool) -> Blocks:
    """CIFAR MobileNetV2: stride-1 stem, 17 inverted residuals, 1x1 conv to 1280, pooled head."""
    stem = nn.Sequential(*_conv(input_shape[0], 32, batch_norm, act=nn.ReLU6))
    blocks: Blocks = [("stem", stem)]
    cin = 32
    for expansion, cout, repeats, first_stride in _MOBILENETV2_STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            block = InvertedResidual(cin, cout, expansion, stride, batch_norm)
            blocks.append((f"ir{len(blocks)}", block))
            cin = cout
    final = nn.Sequential(*_conv(cin, 1280, batch_norm, kernel=1, act=nn.ReLU6))
    return blocks + [("final", final), ("head", _head(1280, num_classes))]


MODELS: dict[str, Builder] = {
    "vgg5": _vgg5,
    "vgg11": lambda shape, classes, bn: _vgg(_VGG_LAYERS["vgg11"], shape, classes, bn),
    "vgg16": lambda shape, classes, bn: _vgg(_VGG_LAYERS["vgg16"], shape, classes, bn),
    "resnet18": _resnet18,
    "mobilenetv2": _mobilenetv2,
}


def model_names() -> list[str]:
    return sorted(MODELS)


def _format_shape(shape: Sequence) -> str:
    return "x".join(str(size) for size in shape)


def _check_config(name: str, input_shape: Sequence, num_classes: int) -> None:
    if name not in MODELS:
        raise PartitionError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    sizes_ok = all(isinstance(size, int) and size > 0 for size in input_shape)
    if len(input_shape) != 3 or not sizes_ok:
        raise PartitionError(f"input shape {tuple(input_shape)!r} is invalid; {SHAPE_FORM}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise PartitionError(f"num_classes must be a positive integer, got {num_classes!r}")


def build_model(name: str, input_shape: Shape, num_classes: int,
                batch_norm: bool = True) -> BlockModel:
    """Build zoo model `name` for images of `input_shape` (C, H, W) and `num_classes` classes."""
    _check_config(name, input_shape, num_classes)
    shape = tuple(input_shape)
    try:
        model = BlockModel(name, shape, num_classes, MODELS[name](shape, num_classes, batch_norm))
        _output_shape([model], shape)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise PartitionError(
            f"input {_format_shape(shape)} is too small for {name}: {first_line}") from error
    return model


@functools.cache
def block_count(name: str) -> int:
    """L, the number of blocks of zoo model `name`; it does not depend on the input shape
    or class count, so one small build answers it for every caller."""
    return build_model(name, (3, 32, 32), 10).num_blocks
