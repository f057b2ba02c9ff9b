"""`edgectl profile`: measure every host's compute and every device's link, or reuse them.

Compute is measured on each host by `python -m profiles.compute` (over SSH in the host's
provisioned venv, or locally), one host after another: hosts of an emulated testbed or a
local fleet share this machine's cores, and a measurement must not compete with another.
Links are measured by a probe session of real agents (agents/probe.py) over the same
protocol and port as training, and then, for devices whose compute profile lacks it, what
each device's agent spends per micro-batch task beyond its compute, by a task probe of
real agents over those links (agents/taskprobe.py). Records go to the profile store and are
reused while fresh.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agents.config import DeviceSpec, RunConfig
from edgectl.errors import EdgectlError, FleetError, UsageError
from edgectl.fleet.hosts import HostSession
from edgectl.fleet.inventory import Host, Inventory
from edgectl.fleet.layout import PROJECT_ROOT, local_python, remote_path, venv_python
from edgectl.fleet.sessions import AgentSession, threads_for
from edgectl.planning.progress import Progress, ProgressCallback, StepClock, no_progress, time_left
from edgectl.planning.store import ProfileStore
from profiles.records import ComputeProfile, LinkProfile

# The label a device's link profile is stored under: the shaping applied to it now, "" for
# none. The network layer knows it (shaping_state.applied_label); planning takes it in.
LinkLabel = Callable[[Host], str]


@dataclass(frozen=True)
class ProfileRequest:
    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    refresh: bool = False
    probe_seconds: float = 2.0
    min_time_s: float | None = None    # None: the host picks (longer under a CPU quota)
    repeats: int = 3
    task_probe: bool = True            # measure what device agents add per task, where unknown


PROBE_MIN_S = 2.0   # agents.probe.MIN_SECONDS: a link probe's least time per direction

# A host's compute profile whose repeated timings differ by more than this (median over
# its blocks and batch sizes of the repeats' range over their median) is measured once more,
# and the quieter of the two is kept; still noisy, it is kept with a warning. Measured here:
# an unthrottled host 1-4%, a testbed server at 1 core 5%, a device at 0.1 core 26% (its
# medians still predicted fl's rounds within 5%), so the line sits above a throttled
# device's usual noise: at 10%, every 0.1-core host was profiled twice.
NOISY_SPREAD = 0.35


@dataclass(frozen=True)
class FleetProfile:
    devices: dict[str, ComputeProfile]
    server: ComputeProfile
    links: dict[str, LinkProfile]
    measured: list[str] = field(default_factory=list)    # what was measured just now
    warnings: list[str] = field(default_factory=list)    # profiles too noisy to trust

    def plain(self) -> FleetProfile:
        """The profiles as measured, without the overheads a calibration stored in them
        (what `--uncalibrated` plans from)."""
        def bare(p: ComputeProfile) -> ComputeProfile:
            return replace(p, task_overhead_s=0.0, byte_overhead_s=0.0)
        return replace(self, server=bare(self.server),
                       devices={name: bare(p) for name, p in self.devices.items()})


def _compute_command(host: Host) -> str:
    if host.is_local:
        return f"cd {shlex.quote(str(PROJECT_ROOT))} && {shlex.quote(local_python(host))} " \
               "-m profiles.compute"
    return f"cd {remote_path(host.workdir)} && {remote_path(venv_python(host))} " \
           "-m profiles.compute"


def measure_host(host: Host, inventory: Inventory, req: ProfileRequest,
                 on_timings: Callable[[int, int], None] | None = None) -> ComputeProfile:
    """The host's compute profile; `on_timings(done, total)` hears the block timings done
    as the host reports them (profiles.compute's progress lines on stderr)."""
    from profiles.compute import default_batch_sizes

    line = json.dumps({"model": req.model, "input_shape": list(req.input_shape),
                       "num_classes": req.num_classes, "host": host.name,
                       "batch_sizes": list(default_batch_sizes(req.batch_size)),
                       "threads": threads_for(host, inventory), "min_time_s": req.min_time_s,
                       "repeats": req.repeats})
    with HostSession(host) as s:
        out = s.check(_compute_command(host), "profiling compute (is the host provisioned?)",
                      stdin=line + "\n",
                      on_stderr_line=_timings_reader(on_timings) if on_timings else None)
    return ComputeProfile.from_json(json.loads(out.strip().splitlines()[-1]))


def _timings_reader(on_timings: Callable[[int, int], None]) -> Callable[[str], None]:
    """A stderr line handler passing on profiles.compute's {"progress": ...} lines (JSON,
    never evaluated); any other line (a warning, the error) is left to the result."""
    def on_line(line: str) -> None:
        if not line.startswith('{"progress"'):
            return
        try:
            news = json.loads(line)["progress"]
            done, total = int(news["done"]), int(news["total"])
        except (ValueError, KeyError, TypeError):
            return
        on_timings(done, total)
    return on_line


def probe_links(inventory: Inventory, req: ProfileRequest,
                on_progress: ProgressCallback = no_progress) -> dict[str, LinkProfile]:
    """Run a probe session of real agents; returns a LinkProfile per device. `on_progress`
    hears it start (with the probe's own time as the estimate) and each device done."""
    count, started = len(inventory.devices), time.monotonic()
    on_progress(Progress("links", total=count,
                         left_s=count * 2 * max(req.probe_seconds, PROBE_MIN_S)))
    run = RunConfig(run_id=f"probe-{int(time.time())}", strategy="pipar", model=req.model,
                    dataset="fashion-mnist",
                    devices=tuple(DeviceSpec(h.name) for h in inventory.devices))
    links: dict[str, LinkProfile] = {}

    def collect(event: dict) -> None:
        if event["type"] == "link":
            links[event["device"]] = LinkProfile(
                event["device"], inventory.server.name, event["uplink_bps"],
                event["downlink_bps"], event["rtt_s"], event["probe_s"], time.time())
            on_progress(Progress("links", host=event["device"], done=len(links), total=count,
                                 left_s=time_left(time.monotonic() - started, len(links),
                                                  count)))

    _probe_session(run, inventory, collect,
                   {"mode": "probe", "probe_seconds": req.probe_seconds}, links,
                   "link probe measured no link for")
    return links


def _probe_session(run: RunConfig, inventory: Inventory, collect: Callable[[dict], None],
                   extra: dict, found: dict, missing_text: str) -> None:
    """Run a probe session of real agents (`extra` says which) until it ends, `collect`
    hearing its events; a device missing from `found` after it is an error."""
    session = AgentSession(run, inventory, collect, extra=extra)
    try:
        session.start_devices(session.start_server())
        session.follow_until_done()
    finally:
        session.stop_all()
    missing = [h.name for h in inventory.devices if h.name not in found]
    if missing:
        raise FleetError(f"{missing_text} {', '.join(missing)}")


TASK_PROBE_BATCHES = 8        # timed mini-batches each way (agents.taskprobe), after 2 more
TASK_PROBE_MICROBATCHES = 4   # N of the probe, at p = 1: the least device compute (the
# probe's time, and the noise the cost per task is told apart from) and the most bytes
TASK_PROBE_LR = 1e-9          # the probe trains on random data: its weights must not move


def probe_tasks(inventory: Inventory, req: ProfileRequest, num_blocks: int,
                on_progress: ProgressCallback = no_progress) -> dict[str, float]:
    """Each device agent's CPU seconds per micro-batch task beyond its stage's compute, by a
    task probe of real agents over the links as they are (agents.taskprobe), at p = 1 with
    N = 4; `on_progress` hears it start and each device done."""
    if num_blocks < 2:   # no split keeps a block on the device and sends anything
        return {h.name: 0.0 for h in inventory.devices}
    count, started = len(inventory.devices), time.monotonic()
    on_progress(Progress("tasks", total=count))
    placement = (1, min(TASK_PROBE_MICROBATCHES, req.batch_size))
    run = RunConfig(run_id=f"tasks-{int(time.time())}", strategy="pipar", model=req.model,
                    dataset="fashion-mnist", batch_size=req.batch_size, lr=TASK_PROBE_LR,
                    devices=tuple(DeviceSpec(h.name) for h in inventory.devices))
    costs: dict[str, float] = {}

    def collect(event: dict) -> None:
        if event["type"] == "task_cost":
            tasks = event["batches"] * event["tasks"]
            costs[event["device"]] = max(event["agent_cpu_s"] - event["stage_cpu_s"], 0.0) / tasks
            on_progress(Progress("tasks", host=event["device"], done=len(costs), total=count,
                                 left_s=time_left(time.monotonic() - started, len(costs),
                                                  count)))

    spec = {"input_shape": list(req.input_shape), "num_classes": req.num_classes,
            "split_point": placement[0], "microbatches": placement[1],
            "batches": TASK_PROBE_BATCHES}
    _probe_session(run, inventory, collect, {"mode": "tasks", "tasks": spec}, costs,
                   "task probe measured nothing for")
    return costs


def measure_links(inventory: Inventory, keep: tuple[ProfileStore, LinkLabel] | None = None,
                  ) -> dict[str, tuple[float, float]]:
    """Each device's (uplink, downlink) bits/s now, by a short probe of real agents: what
    `edgectl shape set` shows after shaping (shaping takes it as its `probe`). With `keep`
    (a store and the label of each device's shaping now) the links are also stored, so a
    plan made under this shaping finds them and does not probe again."""
    request = ProfileRequest("vgg5", (1, 28, 28), 10, 1)
    try:
        links = probe_links(inventory, request)
    except EdgectlError as e:
        raise FleetError(f"measuring the shaped links failed (are the hosts provisioned? "
                         f"run `edgectl provision`, or set without measuring): {e}") from None
    if keep:
        store, label = keep
        hosts = {h.name: h for h in inventory.devices}
        for link in links.values():
            store.save_link(link, label(hosts[link.device]))
    return {name: (link.uplink_bps, link.downlink_bps) for name, link in links.items()}


def profile_fleet(inventory: Inventory, req: ProfileRequest, store: ProfileStore, *,
                  link_label: LinkLabel,
                  on_progress: ProgressCallback = no_progress) -> FleetProfile:
    """Every host's compute profile and every device's link profile, measuring what the
    store lacks (or everything, with refresh). Links are stored and looked up under
    `link_label(device)`: the shaping applied to it now ("" for none). `on_progress`
    hears which host is measured, its block timings done and the time left."""
    if req.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {req.batch_size}")
    computes = {host.name: None if req.refresh else store.load_compute(
        host.name, req.model, req.input_shape, req.batch_size) for host in inventory.hosts}
    missing = [host for host in inventory.hosts if computes[host.name] is None]
    clock, measured, warnings = StepClock(len(missing)), [], []
    for index, host in enumerate(missing, start=1):
        clock.start_part()
        computes[host.name] = _measure_host_reporting(host, inventory, req, clock, index,
                                                      on_progress)
        clock.end_part()
        store.save_compute(computes[host.name], req.batch_size)
        measured.append(f"{host.name} compute")
    for host in inventory.hosts:
        found = computes[host.name]
        if (found.spread or 0.0) > NOISY_SPREAD:
            warnings.append(f"{host.name} compute: repeated timings differ by "
                            f"{found.spread:.0%} (was the host busy?); plans from it may be "
                            "off: profile again with --refresh when it is quiet")
    shaping = {h.name: link_label(h) for h in inventory.devices}
    links = {h.name: None if req.refresh else store.load_link(h.name, shaping[h.name])
             for h in inventory.devices}
    if any(v is None for v in links.values()):
        links = probe_links(inventory, req, on_progress)
        for link in links.values():
            store.save_link(link, shaping[link.device])
        measured += [f"{name} link" for name in links]
    if req.task_probe and any(computes[h.name].agent_task_cpu_s is None
                              for h in inventory.devices):
        costs = probe_tasks(inventory, req, computes[inventory.server.name].num_blocks,
                            on_progress)
        for host in inventory.devices:
            computes[host.name] = replace(computes[host.name],
                                          agent_task_cpu_s=costs[host.name])
            store.save_compute(computes[host.name], req.batch_size)
        measured += [f"{name} task cost" for name in costs]
    return FleetProfile({h.name: computes[h.name] for h in inventory.devices},
                        computes[inventory.server.name], links, measured, warnings)


def _measure_host_reporting(host: Host, inventory: Inventory, req: ProfileRequest,
                            clock: StepClock, index: int,
                            on_progress: ProgressCallback) -> ComputeProfile:
    """measure_host (twice when noisy: `_quieter`), telling `on_progress` how it goes."""
    def reporter(note: str = "") -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            on_progress(Progress("compute", host.name, index, clock.parts, done, total,
                                 clock.left_s(done, total), note))
        return report

    def again() -> ComputeProfile:
        clock.start_part()   # the estimate restarts with the second measurement
        return measure_host(host, inventory, req, reporter("again: its timings were noisy"))

    reporter()(0, 0)
    return _quieter(measure_host(host, inventory, req, reporter()), again)


def _quieter(first: ComputeProfile, again: Callable[[], ComputeProfile]) -> ComputeProfile:
    """`first`, or when it is noisy a second measurement if that is quieter."""
    if (first.spread or 0.0) <= NOISY_SPREAD:
        return first
    second = again()
    return second if (second.spread or 0.0) < (first.spread or 0.0) else first


def request_for(model: str, dataset: str, input_text: str | None, classes: int | None,
                batch_size: int, **kw) -> ProfileRequest:
    """A profile request; the input shape comes from --input or the dataset's name."""
    from agents.dataset_catalog import dataset_shape
    from partitions.catalog import catalog_model_names as model_names
    from partitions.catalog import parse_input_shape

    if model not in model_names():
        raise UsageError(f"--model {model!r} is unknown; choose one of: {', '.join(model_names())}")
    known = dataset_shape(dataset)
    if input_text:
        shape, n = parse_input_shape(input_text), classes or (known[1] if known else 10)
    elif known:
        shape, n = known[0], classes or known[1]
    else:
        raise UsageError(f"--dataset {dataset}: its input shape is only known from its files; "
                         "pass --input CxHxW and --classes")
    return ProfileRequest(model, shape, n, batch_size, **kw)
