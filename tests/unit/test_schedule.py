"""Schedules and strategy placement, checked without a network."""

from __future__ import annotations

import pytest

from agents.config import DeviceSpec
from agents.errors import AgentError
from agents.schedule import format_schedule, local_schedule, microbatch_slices, pipeline_schedule
from agents.strategies import STRATEGIES, get_strategy


def test_pipar_runs_every_forward_before_any_backward():
    assert format_schedule(pipeline_schedule(3)) == "F0 F1 F2 B0 B1 B2 S"


def test_split_is_the_pipeline_of_one_microbatch():
    strategy = get_strategy("split")
    placement = strategy.place(DeviceSpec("d", 2, None), 5, 32)
    assert placement.microbatches == 1
    assert format_schedule(strategy.device_schedule(placement, 5)) == "F0 B0 S"


def test_a_device_without_blocks_waits_for_no_gradient():
    pipar = get_strategy("pipar")
    placement = pipar.place(DeviceSpec("d", 0, 2), 5, 32)
    assert format_schedule(pipar.device_schedule(placement, 5)) == "F0 F1 S"


def test_fl_trains_the_whole_model_locally():
    fl = get_strategy("fl")
    placement = fl.place(DeviceSpec("d", 1, 8), 5, 32)
    assert (placement.split_point, placement.microbatches) == (5, 1)
    assert format_schedule(fl.device_schedule(placement, 5)) == format_schedule(local_schedule())


def test_pipar_defaults_are_the_documented_ones():
    placement = get_strategy("pipar").place(DeviceSpec("d"), 5, 32)
    assert (placement.split_point, placement.microbatches) == (2, 4)
    assert get_strategy("pipar").place(DeviceSpec("d"), 5, 2).microbatches == 2


def test_out_of_range_split_point_is_refused():
    with pytest.raises(AgentError, match="split point 9 out of range, choose 0..5"):
        get_strategy("pipar").place(DeviceSpec("d", 9, 2), 5, 32)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(AgentError, match="choose one of: dpsgd, ecofed, fl, pipar, plexus, split"):
        get_strategy("pipa")
    assert set(STRATEGIES) == {"fl", "split", "pipar", "ecofed", "plexus", "dpsgd"}


@pytest.mark.parametrize("b,n", [(32, 4), (16, 3), (5, 5), (7, 1), (10, 4)])
def test_microbatch_slices_cover_the_batch_evenly(b, n):
    slices = microbatch_slices(b, n)
    sizes = [s.stop - s.start for s in slices]
    assert len(slices) == n and sum(sizes) == b
    assert max(sizes) - min(sizes) <= 1
    assert all(a.stop == c.start for a, c in zip(slices, slices[1:], strict=False))


def test_a_split_device_holding_every_block_trains_locally():
    for name in ("split", "pipar"):
        strategy = get_strategy(name)
        placement = strategy.place(DeviceSpec("d", 5, 1), 5, 32)
        assert format_schedule(strategy.device_schedule(placement, 5)) == "L S"
