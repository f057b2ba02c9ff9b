"""The stages' optimizer: torch.optim.SGD's weights, step for step, without torch.optim."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from agents.stage import MomentumSGD
from partitions.zoo import build_model


def test_momentum_sgd_computes_exactly_what_torch_sgd_computes():
    torch.manual_seed(0)
    ours = build_model("vgg5", (1, 28, 28), 10)
    theirs = copy.deepcopy(ours)
    sgd = MomentumSGD([p for p in ours.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        for model, opt in ((ours, sgd), (theirs, reference)):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_a_parameter_without_gradient_is_left_alone():
    p = torch.nn.Parameter(torch.ones(3))
    MomentumSGD([p], lr=0.1, momentum=0.9).step()
    assert torch.equal(p.detach(), torch.ones(3))
