"""Benchmark: every strategy's iteration against this host's compute floor, and agent start.

    PYTHONPATH=. python3 bench/floor.py [--repeats 3] [--max-batches 25] [--batch-size 100]
                                        [--modes fl,split:1,pipar:1:4,...] [--data-dir DIR]

The workload is the issue's: VGG-5 on 3x32x32 CIFAR-10-format data, B = 100, 25
mini-batches, one round, on the built-in local fleet (1 server + 2 devices on this host).
Without --data-dir the data is SYNTHETIC: a full-size CIFAR-10 binary batch directory
(50000 + 10000 records, the format agents.data_formats reads) of class templates plus
noise, written to a temporary folder and removed afterwards. Compute does not depend on
pixel values, so iteration times are those of real CIFAR-10; accuracies are not.

The floor: one VGG-5 training step (forward, loss, backward, SGD step) at B on ONE thread,
median of several after warm-up, in a fresh process set up as an agent is (the allocator
settings of `profiles.host.keep_freed_memory`), times the number of devices, over the
cores available to the fleet (`profiles.host.available_cores`): the iteration every mode
could reach if the fleet's cores never idled, since the total compute is the same
wherever the split is.

This host's speed drifts (a shared virtual machine: the same step measured 105-136 ms
within minutes), so the floor is measured before every run and after the last: each
run's ratio is its iteration over the mean of the floors just before and just after it.
A split mode does more compute than the floor: N micro-batches cost more than one batch of
B, and the activation and its gradient are copied. So beside each run the benchmark also
times the mode's own compute: the same model split at p, N micro-batches through both
parts, the copies the wire makes, both optimizers' steps, on ONE thread in a fresh process
with no agents, no sockets and no other thread (x devices / cores, as the floor). A run's
ratio to that is what the agents add: messages, threads, scheduling, idle cores.

Modes run interleaved (every mode once per repetition); each mode's figures are medians
over the repetitions of its iteration and of its ratios. Two iterations: the round's (its
training wall time / mini-batches) and the steady one, without each device's first
mini-batch (see `Watch`): the floor and the own compute are timed after warm-up steps, and
a run's first mini-batch is its warm-up. A second table splits the CPU used per steady
iteration by agent and thread (the names agents.threads gives them): compute workers,
main threads, the wire's threads, the rest, and the coordinator, against what the cores
could give. Agent start is measured apart from the runs
(`bench/agent_start.py`): process start to ready, per agent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profiles.host import available_cores, keep_freed_memory  # noqa: E402

if "--measure" in sys.argv:   # a child of in_agent_process: set up as an agent is, first
    keep_freed_memory()

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from agent_start import measure_agent_start  # noqa: E402

from agents.schedule import microbatch_slices  # noqa: E402
from edgectl.fleet.inventory import load_inventory  # noqa: E402
from edgectl.runs.options import TrainOptions  # noqa: E402
from edgectl.runs.runner import train  # noqa: E402
from partitions.parts import split  # noqa: E402
from partitions.zoo import build_model  # noqa: E402

DEFAULT_MODES = "fl,split:1,split:3,pipar:1:4,pipar:2:2,pipar:3:4"
CIFAR_RECORD = 1 + 3 * 32 * 32


@dataclass(frozen=True)
class Mode:
    """One row of the table: a strategy with its split point and micro-batches."""

    strategy: str
    split_point: int | None = None
    microbatches: int | None = None

    @classmethod
    def parse(cls, text: str) -> Mode:
        """`fl`, `split:P` or `pipar:P:N`, the placements this benchmark knows how to time
        alone too (`mode_step_s`); anything else is a ValueError saying so."""
        name, *rest = text.split(":")
        shapes = {"fl": 0, "split": 1, "pipar": 2}
        if shapes.get(name) != len(rest) or not all(v.isdigit() for v in rest):
            raise ValueError(f"mode {text!r}: give fl, split:P or pipar:P:N (P the split "
                             "point, N the micro-batches), e.g. split:1 or pipar:2:4")
        values = [int(v) for v in rest] + [None, None]
        return cls(name, values[0], values[1])

    @property
    def spec(self) -> str:
        """The text `parse` reads."""
        values = [v for v in (self.split_point, self.microbatches) if v is not None]
        return ":".join([self.strategy, *map(str, values)])

    def __str__(self) -> str:
        if self.strategy == "fl":
            return "fl"
        n = "" if self.microbatches is None else f" N={self.microbatches}"
        return f"{self.strategy} p={self.split_point}{n}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=DEFAULT_MODES,
                   help="comma-separated strategy[:p[:N]]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batches", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir", default=None, help="a CIFAR-10 binary folder (else synthetic)")
    p.add_argument("--eval-samples", type=int, default=0, help="0: the whole test set")
    p.add_argument("--skip-start", action="store_true", help="do not measure agent start")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep the runs' records in DIR (to read their spans afterwards)")
    p.add_argument("--measure", metavar="WHAT", help=argparse.SUPPRESS)   # in_agent_process
    return p.parse_args()


def write_synthetic_cifar10(folder: Path, train: int = 50000, test: int = 10000) -> Path:
    """A CIFAR-10 binary batch directory: 5 train batches and a test batch of records
    (label byte + 3072 pixel bytes), images a per-class template plus uniform noise."""
    out = folder / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 160, size=(10, 3 * 32 * 32), dtype=np.uint8)
    files = [(f"data_batch_{i}.bin", train // 5) for i in range(1, 6)] + [("test_batch.bin", test)]
    for name, count in files:
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        pixels = templates[labels] + rng.integers(0, 96, size=(count, 3072), dtype=np.uint8)
        records = np.concatenate([labels[:, None], pixels], axis=1)
        (out / name).write_bytes(records.tobytes())
    (out / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return folder


def timed(step: Callable[[], None], steps: int, warm_up: int = 3,
          after_warm_up: Callable[[], None] | None = None) -> list[float]:
    """Times of `steps` calls of `step` on ONE thread, after `warm_up` untimed ones;
    `after_warm_up` is called once, just before the first timed one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warm_up):
            step()
        if after_warm_up is not None:
            after_warm_up()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return times
    finally:
        torch.set_num_threads(threads)


def step_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *,
               warm_up: int = 3, optimizer: torch.optim.Optimizer | None = None,
               after_warm_up: Callable[[], None] | None = None) -> list[float]:
    """Times of `steps` training steps (forward, loss, backward, and the optimizer's step
    when one is given) on ONE thread, after `warm_up` untimed ones (see `timed`)."""
    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        if optimizer is not None:
            optimizer.step()
        (optimizer or model).zero_grad(set_to_none=True)

    return timed(step, steps, warm_up, after_warm_up)


def vgg5_step(batch_size: int) -> tuple:
    """The floor's workload: VGG-5 on 3x32x32, SGD with momentum, a random batch:
    (model, x, y, optimizer)."""
    model = build_model("vgg5", (3, 32, 32), 10)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    return model, x, y, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def single_thread_step_s(batch_size: int, steps: int = 20) -> float:
    """Median time of one VGG-5 training step at `batch_size` on one thread."""
    model, x, y, optimizer = vgg5_step(batch_size)
    return statistics.median(step_times(model, x, y, steps, optimizer=optimizer))


def mode_step_s(mode: Mode, batch_size: int, steps: int = 10) -> float:
    """Median time of one mini-batch of `mode`'s compute on ONE thread, without agents:
    device part [0, p) and server part [p, L) on each of N micro-batches (the activation
    copied and its gradient copied back, as the wire does; each micro-batch's loss weighted
    by its share, as agents.stage does), all forwards before the device's backwards, as
    the pipeline schedule runs them, then both optimizers' steps. fl: the floor's step."""
    if mode.strategy == "fl":
        return single_thread_step_s(batch_size, steps)
    model = build_model("vgg5", (3, 32, 32), 10)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    device, server = split(model, mode.split_point)
    optimizers = [torch.optim.SGD(part.parameters(), lr=0.01, momentum=0.9)
                  for part in (device, server) if any(True for _ in part.parameters())]
    chunks = [(x[sl], y[sl]) for sl in microbatch_slices(batch_size, mode.microbatches or 1)]

    def step() -> None:
        sent = []
        for xb, yb in chunks:
            out = device(xb)
            received = out.detach().clone().requires_grad_()
            (F.cross_entropy(server(received), yb) * (len(yb) / batch_size)).backward()
            sent.append((out, received.grad.clone()))
        for out, grad in sent:
            out.backward(grad)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return statistics.median(timed(step, steps))


def in_agent_process(what: str, batch_size: int) -> float:
    """Seconds of one step, measured by a fresh interpreter set up as an agent is (the
    allocator setting first): `floor`, or a mode's own compute. Not in this process, the
    coordinator's: with the setting here the agents' runs were slowed, by up to 45% and
    most in the first runs (split p = 1: 159-177 ms against 123-126 without), and
    `edgectl train` does not set it either."""
    done = subprocess.run([sys.executable, __file__, "--measure", what, "--batch-size",
                           str(batch_size)], stdout=subprocess.PIPE, text=True, timeout=600)
    if done.returncode != 0:   # its traceback went to stderr, above
        sys.exit(f"bench/floor.py: timing {what} in a fresh process failed "
                 f"(exit {done.returncode})")
    return float(done.stdout.split()[-1])


def measure(what: str, batch_size: int) -> float:
    """The step `in_agent_process` asks for, in this process."""
    if what == "floor":
        return single_thread_step_s(batch_size)
    return mode_step_s(Mode.parse(what), batch_size)


def thread_kind(pid: int, tid: int, name: str) -> str:
    """The column an agent's thread is counted in, by the name agents.threads gave it."""
    if tid == pid:
        return "main"
    for prefix, kind in (("server-worker", "workers"), ("tx-", "wire"), ("rx-", "wire"),
                         ("heartbeat", "wire")):
        if name.startswith(prefix):
            return kind
    return "other"


def thread_cpu(pids: dict[str, int]) -> dict[tuple[int, int | None], tuple[str, str, float]]:
    """CPU seconds so far of every agent's threads by (pid, thread id): (role, kind,
    seconds); and of each whole process, this one (the coordinator) too, by (pid, None):
    (role, "process", seconds), threads that have ended included. Role `server`,
    `devices` (all devices together) or `coordinator`; kind from `thread_kind`. The
    kernel counts in ticks of 10 ms: over a window of 25 iterations one tick is 0.4 ms an
    iteration, so the small figures are rough."""
    cpu = {}
    processes = [("coordinator", os.getpid())] + [
        ("server" if host == "server" else "devices", pid) for host, pid in pids.items()]
    for role, pid in processes:
        try:
            process = psutil.Process(pid)
            threads, times = process.threads(), process.cpu_times()
        except psutil.Error:   # gone already: its threads count for nothing from here on
            continue
        cpu[pid, None] = (role, "process", times.user + times.system)
        if role == "coordinator":   # counted whole
            continue
        for t in threads:
            try:
                name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                continue
            cpu[pid, t.id] = (role, thread_kind(pid, t.id, name), t.user_time + t.system_time)
    return cpu


CPU_COLUMNS = [("server", "workers"), ("server", "main"), ("server", "wire"),
               ("server", "other"), ("devices", "main"), ("devices", "wire"),
               ("devices", "other"), ("coordinator", "all")]


class Watch:
    """What the benchmark reads from a run's events as they arrive.

    The steady iteration: for each device, the time from the end of its first mini-batch
    to the end of its last over the mini-batches between (its `progress` events); the
    slowest device's. The floor is timed after warm-up steps, and a run's first mini-batch
    is its warm-up at the real batch size (torch's kernels set up for new shapes, memory
    faulted in): 150-400 ms here against 100-130 for the rest, which over 25 mini-batches
    adds up to 13% to the round's iteration. Both are printed.

    The CPU: every agent thread's CPU time (psutil; names from /proc, as agents.threads
    sets them) when every device has finished its first mini-batch and when the first
    device finishes its last; between the two, every device trains. Per steady iteration:
    the CPU used over that window x steady iteration / window."""

    def __init__(self, devices: int):
        self.devices = devices
        self.pids: dict[str, int] = {}
        self.ends: dict[str, list[float]] = defaultdict(list)
        self.window: list[tuple[float, dict]] = []   # (time, thread_cpu) at its two ends

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "ready" and "pid" in event:
            self.pids[event["host"]] = event["pid"]
        elif kind == "progress":
            self.ends[event["host"]].append(event["time"])
            started = len(self.ends) == self.devices
            if (started and not self.window) or (
                    len(self.window) == 1 and event["batch"] == event["batches"]):
                self.window.append((time.monotonic(), thread_cpu(self.pids)))

    @property
    def steady_s(self) -> float | None:
        rates = [(t[-1] - t[0]) / (len(t) - 1) for t in self.ends.values() if len(t) > 1]
        return max(rates) if len(rates) == self.devices else None

    def cpu_per_iteration(self) -> dict[tuple[str, str], float] | None:
        """Seconds of CPU per steady iteration by (role, kind); None when the window did
        not close (a run of one mini-batch)."""
        if len(self.window) < 2 or self.steady_s is None:
            return None
        (t0, before), (t1, after) = self.window
        scale = self.steady_s / (t1 - t0)
        used = dict.fromkeys(CPU_COLUMNS, 0.0)
        whole: dict[int, tuple[str, float]] = {}   # per process: (role, its CPU)
        named: dict[int, float] = {}   # per process: what its live threads account for
        for (pid, tid), (role, kind, end) in after.items():
            spent = (end - before[pid, tid][2] if (pid, tid) in before else end) * scale
            if tid is None:
                whole[pid] = (role, spent)
            else:
                named[pid] = named.get(pid, 0.0) + spent
                used[role, kind] += spent
        for pid, (role, spent) in whole.items():
            if role == "coordinator":
                used[role, "all"] += spent
            else:   # threads that ended inside the window (a loader, a prefetcher)
                used[role, "other"] += max(spent - named.get(pid, 0.0), 0.0)
        return used


def run_mode(mode: Mode, args: argparse.Namespace, data_dir: str, runs_dir: str,
             watch: Watch):
    options = TrainOptions(strategy=mode.strategy, model="vgg5", dataset="cifar10",
                           data_dir=data_dir, rounds=1, batch_size=args.batch_size,
                           split_point=mode.split_point, microbatches=mode.microbatches,
                           max_batches=args.max_batches, eval_samples=args.eval_samples)
    return train(options, load_inventory(None), runs_dir, "bench/floor.py",
                 on_event=watch.on_event).summary


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass
class Row:
    """One mode's figures, one per repetition."""

    iterations: list[float] = field(default_factory=list)   # s
    ratios: list[float] = field(default_factory=list)       # iteration / floor beside it
    own: list[float] = field(default_factory=list)          # the mode's own compute, s
    over_own: list[float] = field(default_factory=list)     # iteration / own compute
    evals: list[float] = field(default_factory=list)        # s
    steady: list[float] = field(default_factory=list)       # steady iteration (Watch), s
    steady_ratios: list[float] = field(default_factory=list)   # steady / floor beside it
    cpu: list[dict] = field(default_factory=list)   # Watch.cpu_per_iteration, s


def run_repetitions(modes: list[Mode], args: argparse.Namespace, data_dir: str,
                    runs_dir: str) -> tuple[list[float], dict[Mode, Row]]:
    """Every mode once per repetition: the mode's own compute just before its run, a floor
    measurement before each run and after the last; returns (floors, rows)."""
    devices, cores = len(load_inventory(None).devices), available_cores()
    share = devices / cores

    def floor() -> float:
        return in_agent_process("floor", args.batch_size) * share

    floors = [floor()]
    rows = {m: Row() for m in modes}
    for rep in range(args.repeats):
        print(f"rep {rep + 1}: load {load_average()}", file=sys.stderr)
        for mode in modes:
            own = in_agent_process(mode.spec, args.batch_size) * share
            watch = Watch(devices)
            summary = run_mode(mode, args, data_dir, runs_dir, watch)
            floors.append(floor())
            beside = (floors[-2] + floors[-1]) / 2
            row, it, steady = rows[mode], summary.iteration_s, watch.steady_s or float("nan")
            row.iterations.append(it)
            row.ratios.append(it / beside)
            row.steady.append(steady)
            row.steady_ratios.append(steady / beside)
            row.own.append(own)
            row.over_own.append(it / own)
            row.evals.append(summary.rounds[-1].eval_s)
            if (cpu := watch.cpu_per_iteration()) is not None:
                row.cpu.append(cpu)
            print(f"  {mode}: {it * 1000:.1f} ms/iteration, steady {steady * 1000:.1f}, "
                  f"floor beside it {beside * 1000:.1f} ms ({row.ratios[-1]:.2f}x, steady "
                  f"{row.steady_ratios[-1]:.2f}x), own compute "
                  f"{own * 1000:.1f} ms ({row.over_own[-1]:.2f}x), eval "
                  f"{row.evals[-1]:.2f} s (load {load_average()})", file=sys.stderr)
    return floors, rows


def print_table(floors: list[float], rows: dict[Mode, Row], args) -> None:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f}"

    print(f"\nVGG-5, 3x32x32, B={args.batch_size}, {args.max_batches} mini-batches, local "
          f"fleet of {len(load_inventory(None).devices)} devices on {available_cores()} cores; "
          f"medians of {args.repeats} interleaved repetitions")
    print(f"floor (1-thread step x devices / cores), measured {len(floors)} times: median "
          f"{statistics.median(floors) * 1000:.1f} ms, range {min(floors) * 1000:.1f}-"
          f"{max(floors) * 1000:.1f}")
    print("own compute: the mode's split and micro-batches on 1 thread, no agents, "
          "x devices / cores")
    print("round: the round's training time / mini-batches; steady: without each device's "
          "first mini-batch (its warm-up at the real shapes), as the floor is timed")
    print(f"{'mode':<16}{'round ms':>10}{'x floor':>9}{'steady ms':>11}{'x floor':>9}"
          f"{'own ms':>8}{'steady x own':>14}{'eval s':>8}   each: steady ms (x floor beside it)")
    for mode, row in rows.items():
        each = ", ".join(f"{v * 1000:.1f} ({r:.2f})" for v, r in zip(row.steady,
                                                                     row.steady_ratios,
                                                                     strict=True))
        over_own = [a / b for a, b in zip(row.steady, row.own, strict=True)]
        print(f"{str(mode):<16}{ms(row.iterations):>10}{statistics.median(row.ratios):>9.2f}"
              f"{ms(row.steady):>11}{statistics.median(row.steady_ratios):>9.2f}"
              f"{ms(row.own):>8}{statistics.median(over_own):>14.2f}"
              f"{statistics.median(row.evals):>8.2f}   {each}")
    print_cpu(rows)


def print_cpu(rows: dict[Mode, Row]) -> None:
    """Where the agents' CPU goes, per steady iteration: by role and thread."""
    cores = available_cores()
    print(f"\nCPU per steady iteration, ms, by agent thread (medians; wire: send, receive and "
          f"heartbeat threads; coord: this process; available: {cores} cores x steady "
          "iteration)")
    short = {"server": "srv", "devices": "dev", "coordinator": "coord"}
    heads = [f"{short[role]} {kind}" for role, kind in CPU_COLUMNS]
    print(f"{'mode':<16}" + "".join(f"{h:>13}" for h in heads) + f"{'all':>8}{'available':>11}")
    for mode, row in rows.items():
        if not row.cpu:
            continue
        cells = [statistics.median(c[k] for c in row.cpu) * 1000 for k in CPU_COLUMNS]
        total = statistics.median(sum(c.values()) for c in row.cpu) * 1000
        print(f"{str(mode):<16}" + "".join(f"{v:>13.1f}" for v in cells)
              + f"{total:>8.1f}{statistics.median(row.steady) * cores * 1000:>11.1f}")

def main() -> None:
    args = parse_args()
    if args.measure:   # a child of in_agent_process (the allocator is set at the top)
        print(measure(args.measure, args.batch_size))
        return
    try:
        modes = [Mode.parse(m) for m in args.modes.split(",")]
    except ValueError as e:
        sys.exit(f"bench/floor.py --modes: {e}")
    scratch = Path(tempfile.mkdtemp(prefix="edgectl-floor-"))
    try:
        data_dir = args.data_dir or str(write_synthetic_cifar10(scratch / "data"))
        if not args.skip_start:
            measure_agent_start(data_dir, args.batch_size)
        print(f"load before the runs: {load_average()}", file=sys.stderr)
        runs_dir = args.keep or str(scratch / "runs")
        results = run_repetitions(modes, args, data_dir, runs_dir)
        print_table(*results, args)
        print(f"load after the runs: {load_average()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
