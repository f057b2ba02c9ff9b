"""The profile store keeps records per inventory, reuses fresh ones, ignores the rest."""

from __future__ import annotations

import json
import time

import pytest

from agents.errors import AgentError
from agents.probe import rate_of
from edgectl.planning.store import ProfileStore
from profiles.records import (
    PROFILE_VERSION,
    BlockTiming,
    ComputeProfile,
    LinkProfile,
    ProfileFormatError,
)


def compute(host="d1", measured_at=None) -> ComputeProfile:
    block = BlockTiming("conv1", (0.001, 0.004), (0.002, 0.008), 100, 10)
    return ComputeProfile(host, "vgg5", (1, 28, 28), 10, (1, 4), (block,), 3136, 1e-9, 2**20,
                          2**30, 1, measured_at=time.time() if measured_at is None else measured_at)


def test_saved_records_are_reused_while_fresh(tmp_path):
    store = ProfileStore.open(str(tmp_path), "ab" * 32)
    store.save_compute(compute(), 32)
    store.save_link(LinkProfile("d1", "server", 2e7, 3e7, 0.002, 2.0, time.time()))
    assert store.load_compute("d1", "vgg5", (1, 28, 28), 32) == compute(
        measured_at=store.load_compute("d1", "vgg5", (1, 28, 28), 32).measured_at)
    assert store.load_link("d1").uplink_bps == 2e7
    assert store.load_compute("d1", "vgg5", (1, 28, 28), 64) is None     # other batch size
    assert store.load_compute("d2", "vgg5", (1, 28, 28), 32) is None     # other host
    other_fleet = ProfileStore.open(str(tmp_path), "cd" * 32)
    assert other_fleet.load_link("d1") is None
    assert len(store.records()) == 2


def test_stale_or_foreign_records_count_as_missing(tmp_path):
    store = ProfileStore.open(str(tmp_path), "ab" * 32, max_age_s=60)
    path = store.save_compute(compute(measured_at=time.time() - 120), 32)
    assert store.load_compute("d1", "vgg5", (1, 28, 28), 32) is None
    data = json.loads(path.read_text())
    data.update(measured_at=time.time(), version=PROFILE_VERSION + 1)
    path.write_text(json.dumps(data))
    assert store.load_compute("d1", "vgg5", (1, 28, 28), 32) is None
    path.write_text("{not json")
    assert store.load_compute("d1", "vgg5", (1, 28, 28), 32) is None


def test_interpolation_and_version_errors():
    prof = compute()
    assert prof.forward_time(0, 1) == pytest.approx(0.001)
    assert prof.forward_time(0, 2) == pytest.approx(0.002)
    assert prof.backward_time(0, 8) == pytest.approx(0.016)
    with pytest.raises(ProfileFormatError, match="measure again with --refresh"):
        ComputeProfile.from_json({**prof.to_json(), "version": 99})


def test_probe_rate_skips_the_first_quarter():
    # 1 MB frames: a burst of 4 in the first 0.1 s, then one every 0.1 s for 1.9 s.
    burst = [(0.0, 10**6), (0.03, 10**6), (0.06, 10**6), (0.1, 10**6)]
    steady = [(0.1 + 0.1 * i, 10**6) for i in range(1, 20)]
    rate = rate_of(burst + steady)
    assert rate == pytest.approx(80e6, rel=0.02)   # 1 MB / 0.1 s = 80 Mbit/s, not the burst
    with pytest.raises(AgentError):
        rate_of([(0.0, 1)])


def test_a_link_measured_under_shaping_is_kept_apart(tmp_path):
    store = ProfileStore.open(str(tmp_path), "ab" * 32)
    store.save_link(LinkProfile("d1", "server", 1e7, 1e7, 0.002, 2.0, time.time()),
                    shaping="up10mbit-down10mbit")
    assert store.load_link("d1") is None
    assert store.load_link("d1", "up10mbit-down10mbit").uplink_bps == 1e7
    assert store.load_link("d1", "up5mbit") is None
