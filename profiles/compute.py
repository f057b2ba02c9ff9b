"""Measuring a model's per-block compute cost on this host: the `ComputeProfile` producer.

Owns `measure_compute` (each block's forward and backward time at several batch sizes, its
activation bytes and parameters, the optimizer step cost, memory), `default_batch_sizes`,
`min_time_for` (how long a timing sample loops) and the entry point the coordinator runs on every
host, `python -m profiles.compute`: one JSON request line on stdin (the keyword arguments
of `measure_compute`) -> one `ComputeProfile.to_json()` line on stdout; an error -> one
line on stderr and exit status 2. While it measures, it writes its progress on stderr as
JSON lines {"progress": {"done": D, "total": T}}: block timings done of all it will take.

Note: how times are taken, and why.
  Split training runs a block's forward, then the backward of that graph; so one loop
  iteration clears the gradients (untimed), runs `out = block(x)` and `out.backward(g)` and
  adds each to its own timer. `x` is the previous block's output on random data, detached,
  requiring grad so the input gradient is computed as on a split (block 0 reads the data:
  no input gradient). With a CFS CPU quota (say 0.25 cores, period 100 ms) one short timing
  is meaningless: a 5 ms op runs at full speed inside the period's budget or waits up to 75
  ms for the next period. So a sample loops the op for at least `min_time_s` (25 CFS
  periods, at most 0.25 s: `min_time_for`) and reports elapsed / loops, the throttled
  average; the result is the median of `repeats` samples, and their range over that median
  is kept as the timing's spread (`BlockTiming.forward_spread`, `backward_spread`). The loop
  count comes from untimed runs (one call absorbing first-call costs, then a probe loop of
  ~min_time_s / 10) using min(wall, CPU time / threads) -- a throttled probe looks slower
  than the op is and would give too few loops -- divided by the quota's share of the
  threads' cores, so that a sample lasts about min_time_s of wall time (counting CPU time
  alone, a sample at 0.1 core lasted ten times min_time_s, and profiling took minutes). A
  sample that still ends early is dropped and the count raised.
  First of all, a tiny optimizer step loads torch's compiler stack (~1.2 s, ~80 MB, once
  per process) and one whole-model training step at the largest batch warms the kernels up.
  Memory is the resident set's growth over its value before the model was built, sampled
  while a graph is alive (after each forward) and after each backward. Not `ru_maxrss`: it
  is the whole process's high-water mark, so in a long-lived process an earlier peak hides
  this one. Sampling misses transient buffers inside a single op.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
import torch
from torch import nn

from partitions.catalog import parse_input_shape
from partitions.zoo import build_model
from profiles.host import available_cores, cpu_facts, cpu_limit, host_identity, keep_freed_memory
from profiles.records import BlockTiming, ComputeProfile

MAX_LOOPS = 1_000_000
FLOAT_BYTES = 4
_REQUIRED = ("model", "input_shape", "num_classes", "batch_sizes", "host", "threads")
_OPTIONAL = ("min_time_s", "repeats", "batch_norm", "seed")
Runner = Callable[[int], tuple[float, ...]]
Progress = Callable[[int, int], None]   # (timings done, timings in all)


QUOTA_MIN_TIME_S = 0.25     # under a quota of unknown period (the kernel's default is 0.1 s)
QUOTA_PERIODS = 25          # else this many periods: a sample's end falls anywhere in one
FREE_MIN_TIME_S = 0.05


def min_time_for(limit: tuple[float, float | None] | None, threads: int = 1) -> float:
    """The least time one timing sample loops for, under `limit` (profiles.host.cpu_limit)
    on `threads` threads: long enough that where in a CFS period the sample ends hardly
    moves its average. A quota of at least `threads` cores never throttles the loop."""
    if limit is None or limit[0] >= threads:
        return FREE_MIN_TIME_S
    _, period = limit
    if period is None:
        return QUOTA_MIN_TIME_S
    return min(QUOTA_MIN_TIME_S, max(FREE_MIN_TIME_S, QUOTA_PERIODS * period))


def default_batch_sizes(batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `batch_size`, and `batch_size`: every micro-batch size B/N is
    measured or lies between two measured sizes."""
    if not _positive_int(batch_size):
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    powers = {1 << k for k in range(batch_size.bit_length()) if 1 << k < batch_size}
    return tuple(sorted(powers | {batch_size}))


@dataclass(frozen=True)
class Sampling:
    """How each timing is taken: samples of at least `min_time_s` (wall), the median of
    `repeats`, on `threads` torch threads, of which a CPU quota lets the loop have `share`
    (1: unthrottled; 0.1 core for one thread: 0.1)."""
    min_time_s: float
    repeats: int
    threads: int = 1
    share: float = 1.0


def _share(limit: tuple[float, float | None] | None, threads: int) -> float:
    """The fraction of `threads` cores a CPU quota `limit` (profiles.host.cpu_limit) allows."""
    return 1.0 if limit is None else min(1.0, limit[0] / threads)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _loops(count: float) -> int:
    return min(MAX_LOOPS, max(1, math.ceil(count)))


def _per_op(run: Runner, loops: int, threads: int) -> float:
    """Seconds per op of `run(loops)`: min(wall, CPU / threads), robust to throttling."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(loops)
    spent = min(time.perf_counter() - wall, (time.process_time() - cpu) / threads)
    return max(spent, 1e-7) / loops


def _median_times(run: Runner, sampling: Sampling) -> tuple[float, ...]:
    """Median over the samples of each phase's time per op; `run(loops)` runs the op
    `loops` times and returns each phase's summed seconds. See the Note above."""
    return tuple(m for m, _ in _timed(run, sampling))


def _timed(run: Runner, sampling: Sampling) -> tuple[tuple[float, float], ...]:
    """Per phase, (median, spread) over the samples of its time per op; spread: the
    samples' range over their median, how far one measurement may be from another."""
    min_time_s, threads, share = sampling.min_time_s, sampling.threads, sampling.share
    per_op = _per_op(run, 1, threads)
    wall_per_op = _per_op(run, _loops(min_time_s * share / 10 / per_op), threads) / share
    loops, retries, samples = _loops(1.1 * min_time_s / wall_per_op), 3, []
    while len(samples) < sampling.repeats:
        start = time.perf_counter()
        phases = run(loops)
        elapsed = time.perf_counter() - start
        if elapsed < min_time_s and retries and loops < MAX_LOOPS:
            retries -= 1
            loops = _loops(loops * 1.2 * min_time_s / max(elapsed, 1e-7))
            continue
        samples.append(tuple(phase / loops for phase in phases))
    return tuple((statistics.median(column), _spread(column))
                 for column in zip(*samples, strict=True))


def _spread(values: Sequence[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


def _block_runner(block: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Runner:
    """A `run(loops)` timing forward and backward of `block` on `x` separately: their wall
    time together, split between them as their CPU time is (see `_split_by_cpu`)."""
    params = list(block.parameters())

    def run(loops: int) -> tuple[float, float]:
        wall = [0.0, 0.0]
        cpu = [0.0, 0.0]
        for _ in range(loops):
            x.grad = None
            for param in params:
                param.grad = None
            start, start_cpu = time.perf_counter(), time.process_time()
            out = block(x)
            middle, middle_cpu = time.perf_counter(), time.process_time()
            out.backward(grad_out)
            wall[0] += middle - start
            wall[1] += time.perf_counter() - middle
            cpu[0] += middle_cpu - start_cpu
            cpu[1] += time.process_time() - middle_cpu
            del out
        return _split_by_cpu(wall, cpu)

    return run


def _split_by_cpu(wall: Sequence[float], cpu: Sequence[float]) -> tuple[float, ...]:
    """The phases' wall time in all, shared out as their CPU time is. Under a CPU quota the
    waits for the next period land in whichever phase is running when the budget runs out:
    with a short forward beside a long backward, a sample of 25 periods gave the forward
    anywhere from none to several of them (its timings' spread reached 3.5x their median,
    and the profile was measured again as noisy). CPU time is what each phase costs; the
    wall time in all is what the quota makes of it. Unthrottled, the two splits agree."""
    total_cpu = sum(cpu)
    if total_cpu <= 0:
        return tuple(wall)
    total_wall = sum(wall)
    return tuple(total_wall * c / total_cpu for c in cpu)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _rss_through_backward(out: torch.Tensor, grad_out: torch.Tensor | None = None) -> int:
    """Largest resident set seen with `out`'s graph alive and after its backward."""
    during = _rss()
    out.backward(grad_out)
    return max(during, _rss())


def _prime_torch() -> None:
    """Load what a process's first optimizer step loads, so it counts in no measurement."""
    param = nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.SGD([param], lr=0.01, momentum=0.9).step()


def _warm_up(net: nn.Module, optimizer: torch.optim.Optimizer, batch: int) -> int:
    """One whole-model training step at `batch`; returns the largest resident set seen."""
    labels = torch.randint(0, net.num_classes, (batch,))
    optimizer.zero_grad()
    out = net(torch.randn(batch, *net.input_shape))
    peak = _rss_through_backward(nn.functional.cross_entropy(out, labels))
    optimizer.step()
    return peak


def _measure_batch(net: nn.Module, batch: int, sampling: Sampling,
                   tick: Callable[[], None] = lambda: None,
                   ) -> tuple[list[tuple[float, ...]], list[int], int]:
    """Per block (forward, backward) seconds and per-sample activation bytes at `batch`,
    and the largest resident set seen; `tick()` after each block's timing."""
    x = torch.randn(batch, *net.input_shape)
    times, activation_bytes, peak = [], [], 0
    for index, block in enumerate(net.blocks.values()):
        x = x.detach().requires_grad_(index > 0)
        with torch.no_grad():
            grad_out = torch.randn_like(block(x))
        times.append(_timed(_block_runner(block, x, grad_out), sampling))
        tick()
        activation_bytes.append(FLOAT_BYTES * math.prod(grad_out.shape[1:]))
        peak = max(peak, _rss_through_backward(block(x), grad_out))
        with torch.no_grad():
            x = block(x)
    return times, activation_bytes, peak


def _step_time(optimizer: torch.optim.Optimizer, sampling: Sampling) -> float:
    """Seconds of one `optimizer.step()` over the gradients in place."""
    def run(loops: int) -> tuple[float]:
        start = time.perf_counter()
        for _ in range(loops):
            optimizer.step()
        return (time.perf_counter() - start,)

    return _median_times(run, sampling)[0]


def _measure(net: nn.Module, sizes: tuple[int, ...], sampling: Sampling,
             on_progress: Progress | None = None,
             ) -> tuple[tuple[BlockTiming, ...], float, int]:
    """Block timings, optimizer step seconds and peak resident set of `net` (see the Note);
    `on_progress(done, total)` after each timing (one per block and batch size, and the
    optimizer step's)."""
    total, done = len(sizes) * net.num_blocks + 1, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, total)

    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    peak = _warm_up(net, optimizer, sizes[-1])
    per_size = []
    for batch in sizes:
        times, activation_bytes, batch_peak = _measure_batch(net, batch, sampling, tick)
        per_size.append(times)
        peak = max(peak, batch_peak)
    step_s = _step_time(optimizer, sampling)  # last: it moves the weights
    tick()
    blocks = tuple(
        BlockTiming(name=name,
                    forward_s=tuple(times[index][0][0] for times in per_size),
                    backward_s=tuple(times[index][1][0] for times in per_size),
                    forward_spread=tuple(round(times[index][0][1], 4) for times in per_size),
                    backward_spread=tuple(round(times[index][1][1], 4) for times in per_size),
                    activation_bytes=activation_bytes[index],
                    params=sum(param.numel() for param in block.parameters()))
        for index, (name, block) in enumerate(net.blocks.items()))
    return blocks, step_s, peak


def _check_args(batch_sizes: Sequence[int], threads: int, min_time_s: float,
                repeats: int) -> tuple[int, ...]:
    """Validate the measuring options; returns the batch sizes sorted and unique."""
    sizes = list(batch_sizes) if isinstance(batch_sizes, (list, tuple)) else []
    if not sizes or not all(_positive_int(size) for size in sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of positive integers, "
                         f"got {batch_sizes!r}")
    for name, value in (("threads", threads), ("repeats", repeats)):
        if not _positive_int(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if type(min_time_s) not in (int, float) or not min_time_s > 0:
        raise ValueError(f"min_time_s must be a positive number of seconds, got {min_time_s!r}")
    return tuple(sorted(set(sizes)))


def measure_compute(model: str, input_shape: tuple[int, int, int], num_classes: int,
                    batch_sizes: Sequence[int], *, host: str, threads: int,
                    min_time_s: float | None = None, repeats: int = 3,
                    batch_norm: bool = True, seed: int = 0,
                    on_progress: Progress | None = None) -> ComputeProfile:
    """Profile zoo model `model` on this host with `threads` torch threads (see the Note).

    min_time_s None: `min_time_for` this host's CPU quota; FREE_MIN_TIME_S where nothing
    throttles the loop. `on_progress(done, total)` hears each timing as it ends."""
    limit = cpu_limit()
    threads = threads or available_cores()  # 0: what an agent here would use
    if min_time_s is None:
        min_time_s = min_time_for(limit, threads)
    sizes = _check_args(batch_sizes, threads, min_time_s, repeats)
    sampling = Sampling(min_time_s, repeats, threads, _share(limit, threads))
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _prime_torch()
        baseline = _rss()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(model, tuple(input_shape), num_classes, batch_norm).train()
            blocks, step_s, peak = _measure(net, sizes, sampling, on_progress)
    finally:
        torch.set_num_threads(previous_threads)
    return ComputeProfile(
        host=host, model=model, input_shape=tuple(input_shape), num_classes=num_classes,
        batch_sizes=sizes, blocks=blocks, input_bytes=FLOAT_BYTES * math.prod(input_shape),
        step_s_per_param=step_s / max(sum(p.numel() for p in net.parameters()), 1),
        peak_memory_bytes=max(peak - baseline, 0),
        memory_available_bytes=psutil.virtual_memory().available, threads=threads,
        cpu=cpu_facts(), host_id=host_identity(), measured_at=time.time(),
        versions={"torch": torch.__version__, "python": platform.python_version()})


def _parse_request(line: str) -> dict:
    """The keyword arguments of `measure_compute` from one JSON request line."""
    request = json.loads(line) if line.strip() else None
    if not isinstance(request, dict):
        raise ValueError(f"expected one JSON object on a line on stdin, got {line[:80]!r}")
    missing = [key for key in _REQUIRED if key not in request]
    unknown = sorted(set(request) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"request keys missing: {missing}, unknown: {unknown}; expected "
                         f"{list(_REQUIRED)} and optionally {list(_OPTIONAL)}")
    shape = request["input_shape"]
    request["input_shape"] = parse_input_shape(shape) if isinstance(shape, str) else \
        tuple(shape) if isinstance(shape, list) else shape
    return request


def _progress_line(done: int, total: int) -> None:
    print(json.dumps({"progress": {"done": done, "total": total}}), file=sys.stderr,
          flush=True)


def main() -> int:
    """`python -m profiles.compute`: one JSON request on stdin -> one profile JSON line."""
    kept = keep_freed_memory()   # as the agents run (profiles.host)
    try:
        profile = measure_compute(**_parse_request(sys.stdin.readline()),
                                  on_progress=_progress_line)
        profile = dataclasses.replace(profile, versions={
            **profile.versions, "malloc": "keep-freed,one-arena" if kept else "default"})
    except (ValueError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split())
        print(f"profiles.compute: {type(error).__name__}: {message}", file=sys.stderr)
        return 2
    print(json.dumps(profile.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
