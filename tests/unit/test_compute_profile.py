"""profiles.compute: batch sizes, a real small measurement of vgg5, the CFS-proof timing loop,
CPU facts, and the `python -m profiles.compute` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from partitions import PartitionError, block_facts, build_model
from profiles import compute
from profiles.compute import (
    FREE_MIN_TIME_S,
    QUOTA_MIN_TIME_S,
    default_batch_sizes,
    measure_compute,
    min_time_for,
)
from profiles.host import cpu_facts, cpu_limit, host_identity
from profiles.records import ComputeProfile

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 28, 28)
SIZES = (1, 2, 4, 16)
CONV_BLOCKS = ("conv1", "conv2", "conv3")


@pytest.fixture(scope="module")
def profile() -> ComputeProfile:
    threads = torch.get_num_threads()
    measured = measure_compute("vgg5", SHAPE, 10, list(reversed(SIZES)), host="here",
                               threads=1, min_time_s=0.01, repeats=3)
    assert torch.get_num_threads() == threads, "the caller's thread count was not restored"
    return measured


def test_default_batch_sizes_are_powers_of_two_below_b_and_b():
    assert default_batch_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert default_batch_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert default_batch_sizes(3) == (1, 2, 3)
    assert default_batch_sizes(1) == (1,)
    for bad in (0, -4, True, 2.0):
        with pytest.raises(ValueError, match="positive integer"):
            default_batch_sizes(bad)


def test_one_timing_per_block_at_every_batch_size(profile):
    model = build_model("vgg5", SHAPE, 10)
    assert [block.name for block in profile.blocks] == model.block_names
    assert profile.batch_sizes == SIZES
    for block, facts in zip(profile.blocks, block_facts(model), strict=True):
        assert len(block.forward_s) == len(block.backward_s) == len(SIZES)
        assert all(t > 0 for t in block.forward_s + block.backward_s), block
        assert block.params == facts.params


def test_conv_forward_time_grows_with_the_batch(profile):
    for block in profile.blocks:
        if block.name in CONV_BLOCKS:
            assert block.forward_s[-1] > block.forward_s[0], block


def test_activation_bytes_match_partition_facts(profile):
    facts = block_facts(build_model("vgg5", SHAPE, 10))
    assert [b.activation_bytes for b in profile.blocks] == [f.activation_bytes for f in facts]
    assert profile.input_bytes == 4 * 28 * 28 == profile.activation_bytes(0)


def test_record_describes_the_host_and_run(profile):
    assert (profile.host, profile.model, profile.threads) == ("here", "vgg5", 1)
    assert profile.host_id == host_identity()
    assert set(profile.cpu) == {"model", "cores", "quota", "period"} and profile.cpu["cores"] >= 1
    assert profile.versions["torch"] == torch.__version__
    assert profile.step_s_per_param > 0
    assert profile.peak_memory_bytes >= 0 and profile.memory_available_bytes > 0


def test_record_round_trips_through_json(profile):
    text = json.dumps(profile.to_json())
    assert ComputeProfile.from_json(json.loads(text)) == profile


def test_interpolation_lies_between_the_measured_neighbours(profile):
    for index in range(profile.num_blocks):
        for times, at in ((profile.blocks[index].forward_s, profile.forward_time),
                          (profile.blocks[index].backward_s, profile.backward_time)):
            for batch, (low, high) in ((3, (1, 2)), (8, (2, 3))):
                value = at(index, batch)
                assert min(times[low], times[high]) <= value <= max(times[low], times[high])


def test_block_runner_computes_the_input_gradient():
    block = build_model("vgg5", SHAPE, 10).blocks["conv2"]
    x = torch.randn(2, 32, 14, 14, requires_grad=True)
    forward, backward = compute._block_runner(block, x, torch.randn(2, 64, 7, 7))(2)
    assert forward > 0 and backward > 0
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_blocks_after_the_first_time_their_input_gradient(monkeypatch):
    inputs = []

    def spy(block, x, grad_out):
        inputs.append((x.is_leaf, x.requires_grad, tuple(x.shape)))
        return real(block, x, grad_out)

    real = compute._block_runner
    monkeypatch.setattr(compute, "_block_runner", spy)
    measure_compute("vgg5", SHAPE, 10, [2], host="h", threads=1, min_time_s=0.001, repeats=1)
    assert [grad for _, grad, _ in inputs] == [False, True, True, True, True]
    assert all(leaf for leaf, _, _ in inputs)
    assert [shape for _, _, shape in inputs] == [
        (2, *SHAPE), (2, 32, 14, 14), (2, 64, 7, 7), (2, 64, 7, 7), (2, 128)]


class FakeCFS:
    """A clock on a host with a CFS quota: `budget_s` of CPU per `period_s`, then waiting."""

    def __init__(self, budget_s: float, period_s: float):
        self.wall = self.cpu = 0.0
        self.budget_s, self.period_s, self.left = budget_s, period_s, budget_s

    def spend(self, cpu_s: float) -> None:
        while cpu_s > 1e-12:
            if self.left <= 1e-12:
                self.wall = (self.wall // self.period_s + 1) * self.period_s
                self.left = self.budget_s
            used = min(cpu_s, self.left)
            self.wall, self.cpu, self.left = self.wall + used, self.cpu + used, self.left - used
            cpu_s -= used


def test_timing_loop_reports_the_throttled_average_under_a_cpu_quota(monkeypatch):
    clock = FakeCFS(budget_s=0.025, period_s=0.1)  # 0.25 cores
    monkeypatch.setattr(compute, "time", SimpleNamespace(
        perf_counter=lambda: clock.wall, process_time=lambda: clock.cpu))
    loops_run = []

    def run(loops: int) -> tuple[float]:
        start = clock.wall
        for _ in range(loops):
            clock.spend(0.005)  # a 5 ms op: 20 ms on average at 0.25 cores
        loops_run.append(loops)
        return (clock.wall - start,)

    (per_op,) = compute._median_times(run, compute.Sampling(min_time_s=0.2, repeats=5, share=0.25))
    assert 0.015 <= per_op <= 0.027, per_op
    assert all(loops * 0.005 / 0.25 >= 0.2 for loops in loops_run[-5:]), loops_run
    # about min_time_s of wall each, not min_time_s of CPU (0.8 s of wall at 0.25 core)
    assert all(loops * 0.005 / 0.25 < 0.4 for loops in loops_run[-5:]), loops_run


def test_loop_calibration_is_not_fooled_by_a_throttled_run(monkeypatch):
    clock = FakeCFS(budget_s=0.025, period_s=0.1)
    clock.left = 0.001  # the budget runs out 1 ms into the calibration run
    monkeypatch.setattr(compute, "time", SimpleNamespace(
        perf_counter=lambda: clock.wall, process_time=lambda: clock.cpu))
    assert compute._per_op(lambda loops: clock.spend(0.005 * loops), 1, 1) == \
        pytest.approx(0.005)
    assert clock.wall > 0.1, "the fake did not throttle"


def test_timing_samples_last_at_least_min_time():
    durations = []

    def run(loops: int) -> tuple[float]:
        start = time.perf_counter()
        for _ in range(loops):
            spin_until = time.perf_counter() + 0.001
            while time.perf_counter() < spin_until:
                pass
        durations.append(time.perf_counter() - start)
        return (durations[-1],)

    (per_op,) = compute._median_times(run, compute.Sampling(min_time_s=0.03, repeats=3))
    assert 0.001 <= per_op < 0.005
    assert all(duration >= 0.03 for duration in durations[-3:]), durations


def test_measure_rejects_bad_options():
    with pytest.raises(ValueError, match="batch_sizes"):
        measure_compute("vgg5", SHAPE, 10, [], host="h", threads=1)
    with pytest.raises(ValueError, match="threads"):
        measure_compute("vgg5", SHAPE, 10, [1], host="h", threads=-1)
    with pytest.raises(ValueError, match="min_time_s"):
        measure_compute("vgg5", SHAPE, 10, [1], host="h", threads=1, min_time_s=0)
    with pytest.raises(PartitionError, match="unknown model"):
        measure_compute("vgg99", SHAPE, 10, [1], host="h", threads=1)


def test_cpu_facts_honour_the_quota_environment_variable(monkeypatch):
    monkeypatch.setenv("EDGECTL_CPU_QUOTA", "0.25")
    monkeypatch.setenv("EDGECTL_CPU_PERIOD_US", "10000")
    assert (cpu_facts()["quota"], cpu_facts()["period"]) == (0.25, 0.01)
    monkeypatch.setenv("EDGECTL_CPU_QUOTA", "0")
    assert (cpu_facts()["quota"], cpu_facts()["period"]) == (None, None)
    facts = cpu_facts()
    assert isinstance(facts["model"], str) and facts["model"]
    assert isinstance(facts["cores"], int) and facts["cores"] >= 1


def test_the_quota_environment_may_carry_the_period(monkeypatch):
    monkeypatch.setenv("EDGECTL_CPU_QUOTA", "0.5")
    monkeypatch.delenv("EDGECTL_CPU_PERIOD_US", raising=False)
    assert cpu_limit() == (0.5, None)
    monkeypatch.setenv("EDGECTL_CPU_PERIOD_US", "10000")
    assert cpu_limit() == (0.5, 0.01)
    monkeypatch.setenv("EDGECTL_CPU_QUOTA", "0")
    assert cpu_limit() is None


@pytest.mark.parametrize(("limit", "expected"), [
    (None, FREE_MIN_TIME_S),          # nothing throttles the loop
    ((0.5, None), QUOTA_MIN_TIME_S),  # a quota of unknown period: assume the long default
    ((0.5, 0.004), 0.1),              # 25 periods
    ((0.5, 0.001), FREE_MIN_TIME_S),  # never less than unthrottled
    ((0.5, 0.1), QUOTA_MIN_TIME_S),   # and at most the default's
    ((1.0, 0.01), FREE_MIN_TIME_S),   # a whole core for one thread never throttles it
])
def test_a_timing_sample_spans_25_cfs_periods_within_bounds(limit, expected):
    assert min_time_for(limit) == pytest.approx(expected)


@pytest.mark.parametrize(("cgroup_line", "files", "expected"), [
    ("0::/tb/pi1", {"tb/pi1/cpu.max": "25000 100000\n"}, (0.25, 0.1)),
    ("0::/tb/pi1", {"tb/pi1/cpu.max": "max 100000\n"}, None),
    ("4:cpu,cpuacct:/pi2", {"cpu,cpuacct/pi2/cpu.cfs_quota_us": "5000\n",
                            "cpu,cpuacct/pi2/cpu.cfs_period_us": "10000\n"}, (0.5, 0.01)),
    ("4:cpu:/pi2", {"cpu/pi2/cpu.cfs_quota_us": "-1\n",
                    "cpu/pi2/cpu.cfs_period_us": "100000\n"}, None),
    ("4:memory:/pi2", {}, None),
])
def test_cpu_limit_reads_this_process_cgroup(tmp_path, monkeypatch, cgroup_line, files,
                                             expected):
    monkeypatch.delenv("EDGECTL_CPU_QUOTA", raising=False)
    monkeypatch.delenv("EDGECTL_CPU_PERIOD_US", raising=False)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cgroup").write_text(cgroup_line + "\n")
    assert cpu_limit(str(tmp_path / "cgroup"), str(tmp_path)) == expected


def test_host_identity_is_stable_short_hex():
    first = host_identity()
    assert first == host_identity() and len(first) == 16
    int(first, 16)


def run_entry_point(stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECTL_CPU_QUOTA": "0.5"}
    return subprocess.run([sys.executable, "-m", "profiles.compute"], input=stdin, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_entry_point_prints_one_profile_line():
    request = {"model": "vgg5", "input_shape": [1, 28, 28], "num_classes": 10,
               "batch_sizes": [2, 1], "host": "pi1", "threads": 1, "min_time_s": 0.005,
               "repeats": 1, "batch_norm": False}
    done = run_entry_point(json.dumps(request) + "\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    record = ComputeProfile.from_json(json.loads(lines[0]))
    assert (record.host, record.batch_sizes, record.num_blocks) == ("pi1", (1, 2), 5)
    assert record.cpu["quota"] == 0.5
    # its progress on stderr: one line per block timing (5 blocks x 2 sizes) and the step's
    progress = [json.loads(line)["progress"] for line in done.stderr.splitlines()]
    assert progress == [{"done": k, "total": 11} for k in range(1, 12)]


@pytest.mark.parametrize(("stdin", "says"), [
    ("this is not json\n", "JSON"),
    ('{"model": "vgg5", "input_shape": "1x28x28", "threads": 1}\n', "missing"),
])
def test_entry_point_reports_a_bad_request_on_one_line(stdin, says):
    done = run_entry_point(stdin)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr


def test_every_timing_keeps_its_spread_and_the_profile_its_median(profile):
    for block in profile.blocks:
        assert len(block.forward_spread) == len(block.backward_spread) == len(SIZES)
        assert all(s >= 0 for s in block.forward_spread + block.backward_spread)
    again = ComputeProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile and again.spread == profile.spread is not None


def test_spread_is_the_time_weighted_median_and_old_profiles_have_none(profile):
    import dataclasses

    def with_spreads(fwd, bwd):
        block = dataclasses.replace(profile.blocks[0], forward_s=(1.0,), backward_s=(3.0,),
                                    forward_spread=(fwd,), backward_spread=(bwd,))
        return block
    blocks = (with_spreads(0.4, 0.0), with_spreads(0.0, 0.0), with_spreads(0.2, 0.2))
    made = dataclasses.replace(profile, blocks=blocks)
    # per block (1 * fwd + 3 * bwd) / 4: 0.1, 0.0, 0.2 -> median 0.1
    assert made.spread == pytest.approx(0.1)
    old = profile.to_json()
    for b in old["blocks"]:
        del b["forward_spread"], b["backward_spread"]
    assert ComputeProfile.from_json(old).spread is None


def test_a_noisy_profile_is_measured_once_more_and_the_quieter_kept(profile):
    import dataclasses

    from edgectl.planning.profiling import NOISY_SPREAD, _quieter

    def noisy(spread):
        return dataclasses.replace(profile, blocks=tuple(
            dataclasses.replace(b, forward_spread=(spread,) * len(SIZES),
                                backward_spread=(spread,) * len(SIZES))
            for b in profile.blocks))
    quiet, loud, louder = (noisy(NOISY_SPREAD * k) for k in (0.5, 1.5, 2.0))
    calls = []

    def again(result):
        return lambda: calls.append(1) or result
    assert _quieter(quiet, again(loud)) is quiet and calls == []
    assert _quieter(loud, again(quiet)) is quiet and len(calls) == 1
    assert _quieter(loud, again(louder)) is loud


def test_throttled_waits_are_shared_out_as_the_phases_cpu_is():
    # 1 ms of forward and 9 ms of backward CPU; the quota's 40 ms wait happened to fall in
    # the forward: the 50 ms of wall go 5 to the forward and 45 to the backward
    assert compute._split_by_cpu([0.041, 0.009], [0.001, 0.009]) == \
        pytest.approx((0.005, 0.045))
    assert compute._split_by_cpu([0.002, 0.003], [0.0, 0.0]) == (0.002, 0.003)
