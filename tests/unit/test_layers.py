"""partitions.layers.MaxPool2d: the same values and gradients as nn.MaxPool2d, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

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
    kind = draw(st.sampled_from(["normal", "relu", "ties"]))
    x = torch.randn(shape, generator=g)
    if kind == "relu":   # zeros everywhere, as after the ReLU before every pool in the zoo
        x = x.relu()
    elif kind == "ties":   # few distinct values: windows with several equal maxima
        x = torch.randint(-2, 3, shape, generator=g).float()
    return x, seed


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
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
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
            assert torch.equal(MaxPool2d(**options)(x), expected)


def test_a_nan_wins_its_window_in_both() -> None:
    x = torch.tensor([[[[1.0, float("nan")], [3.0, 2.0]]]], requires_grad=True)
    out = MaxPool2d(2)(x)
    assert torch.isnan(out).all()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    (expected,) = torch.autograd.grad(F.max_pool2d(x, 2), x, torch.ones_like(out))
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("name", ["vgg5", "vgg11", "vgg16"])
def test_the_zoos_pools_are_these(name) -> None:
    model = build_model(name, (3, 32, 32), 10)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(isinstance(m, MaxPool2d) for m in pools)
