"""partitions.layers.MaxPool2d: the same values and gradients as nn.MaxPool2d, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from partitions import layers
from partitions.layers import MaxPool2d
from partitions.zoo import build_model


@st.composite
def pools(draw):
    kernel = draw(st.integers(1, 3))
    return dict(kernel_size=kernel, stride=draw(st.sampled_from([None, 1, 2, 3])),
                padding=draw(st.integers(0, kernel // 2)), ceil_mode=draw(st.booleans()))
    # dilation stays 1, as in every pool of the zoo: torch's own backward aborts the process
    # on some dilated windows that hold no input (e.g. 1x7 maps, kernel 3, dilation 2,
    # padding 1, ceil_mode), in nn.MaxPool2d as in this one


@st.composite
def inputs(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 12)),
             draw(st.integers(1, 12)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "relu", "ties", "nan"]))
    x = torch.randn(shape, generator=g)
    if kind == "relu":   # zeros everywhere, as after the ReLU before every pool in the zoo
        x = x.relu()
    elif kind == "ties":   # few distinct values: windows with several equal maxima
        x = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "nan":   # NaN, +inf and -inf sprinkled in, several to a window at times
        specials = torch.tensor([float("nan"), float("inf"), -float("inf")])
        picks = torch.randint(0, 3, shape, generator=g)
        x = torch.where(torch.rand(shape, generator=g) < 0.3, specials[picks], x)
    return x, seed


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit in value, NaN where the other has NaN."""
    try:
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    except AssertionError:
        return False
    return True


def reference_and_ours(options: dict, x: torch.Tensor, seed: int):
    """((output, input gradient) of nn.MaxPool2d, the same of ours), or None where the
    options do not fit the input (both must then refuse it)."""
    results = []
    for layer in (nn.MaxPool2d(**options), MaxPool2d(**options)):
        xi = x.clone().requires_grad_()
        try:
            out = layer(xi)
        except RuntimeError:
            results.append(None)
            continue
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        (grad_x,) = torch.autograd.grad(out, xi, grad)
        results.append((out, grad_x))
    return results


@settings(max_examples=300, deadline=None)
@given(pools(), inputs())
def test_values_and_gradients_are_those_of_nn_maxpool2d(options, example) -> None:
    x, seed = example
    theirs, ours = reference_and_ours(options, x, seed)
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    assert same(ours[0], theirs[0])
    assert same(ours[1], theirs[1])
    assert ours[0].is_contiguous() and ours[1].is_contiguous()


@settings(max_examples=100, deadline=None)
@given(pools(), inputs())
def test_without_gradients_the_values_are_the_same_too(options, example) -> None:
    x, _ = example
    try:
        expected = F.max_pool2d(x, **options)
    except RuntimeError:
        return
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert same(MaxPool2d(**options)(x), expected)


def test_the_new_path_is_the_one_taken_for_the_zoos_inputs(monkeypatch) -> None:
    """The comparisons above are worth something only if the channels-last path runs: it
    does for a contiguous NCHW float input with more than one channel."""
    calls = []
    real = layers._PoolChannelsLast.apply
    monkeypatch.setattr(layers._PoolChannelsLast, "apply",
                        lambda *a: calls.append(1) or real(*a))
    MaxPool2d(2)(torch.randn(2, 3, 4, 4, requires_grad=True))
    assert calls == [1]


def test_several_nans_in_a_window_give_the_same_values_and_gradients() -> None:
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[[[1.0, nan], [nan, 2.0]], [[inf, -inf], [nan, 0.0]]]] * 2,
                     requires_grad=True)
    out = MaxPool2d(2)(x)
    assert torch.isnan(out[:, 0]).all() and torch.isnan(out[:, 1]).all()
    grad = torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape) + 1
    (ours,) = torch.autograd.grad(out, x, grad)
    (theirs,) = torch.autograd.grad(F.max_pool2d(x, 2), x, grad)
    assert torch.equal(ours, theirs)


def test_second_derivatives_are_those_of_nn_maxpool2d() -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for layer in (nn.MaxPool2d(2), MaxPool2d(2)):
        (g,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        results.append(gg)
    assert torch.equal(*results)


def test_a_vgg5_trains_to_the_same_weights_with_either_pool() -> None:
    torch.manual_seed(0)
    ours = build_model("vgg5", (3, 32, 32), 10)
    theirs = copy.deepcopy(ours)
    for parent in theirs.modules():   # torch's own pools, same settings
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride,
                                                   child.padding, ceil_mode=child.ceil_mode))
    assert not any(isinstance(m, MaxPool2d) for m in theirs.modules())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for model in (ours, theirs):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            F.cross_entropy(model(x.relu()), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["vgg5", "vgg11", "vgg16"])
def test_the_zoos_pools_are_these(name) -> None:
    model = build_model(name, (3, 32, 32), 10)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(isinstance(m, MaxPool2d) for m in pools)
