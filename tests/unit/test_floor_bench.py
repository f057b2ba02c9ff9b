"""bench/floor.py's Watch: the steady iteration and the agents' CPU by thread."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def floor():
    spec = importlib.util.spec_from_file_location("floor_bench", ROOT / "bench" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def progress(host: str, batch: int, batches: int, at: float) -> dict:
    return {"type": "progress", "host": host, "batch": batch, "batches": batches, "time": at}


def test_the_steady_iteration_leaves_out_each_devices_first_mini_batch(floor) -> None:
    watch = floor.Watch(devices=2)
    for host, ends in (("device1", [10.4, 10.5, 10.6, 10.7]),   # first 0.4 s, then 0.1
                       ("device2", [10.2, 10.35, 10.5, 10.65])):   # first 0.2 s, then 0.15
        for batch, at in enumerate(ends, start=1):
            watch.on_event(progress(host, batch, len(ends), at))
    assert watch.steady_s == pytest.approx(0.15)   # the slower device's


def test_no_steady_iteration_until_every_device_has_two_mini_batches(floor) -> None:
    watch = floor.Watch(devices=2)
    watch.on_event(progress("device1", 1, 2, 1.0))
    watch.on_event(progress("device1", 2, 2, 1.1))
    watch.on_event(progress("device2", 1, 2, 1.0))
    assert watch.steady_s is None
    assert watch.cpu_per_iteration() is None


SPINNER = """
import sys, threading, time
sys.path.insert(0, {root!r})
from agents.threads import Thread
spun, release = threading.Event(), threading.Event()
def spin():
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
    spun.set()
    release.wait()   # alive when the window closes, as an agent's threads are
def spin_and_end():
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
t = Thread(target=spin, name="tx-server")
ending = Thread(target=spin_and_end, name="prefetch")
print("ready", flush=True)
sys.stdin.readline()
t.start(); ending.start(); spun.wait(); ending.join()
print("done", flush=True)
sys.stdin.readline()
release.set(); t.join()
"""


def test_a_devices_cpu_between_the_windows_ends_is_counted_under_its_threads_name(
        floor) -> None:
    """A device whose send thread spins 0.3 s of CPU inside the window: counted as wire
    CPU of the devices, per steady iteration (one iteration here, as long as the window);
    a thread that spins 0.2 s and ends inside the window still counts, as `other`."""
    if not sys.platform.startswith("linux"):
        pytest.skip("thread names and CPU from /proc are Linux's")
    child = subprocess.Popen([sys.executable, "-c", SPINNER.format(root=str(ROOT))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        watch = floor.Watch(devices=1)
        watch.on_event({"type": "ready", "host": "device1", "pid": child.pid})
        start = time.time()
        watch.on_event(progress("device1", 1, 2, start))   # the window opens
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        watch.on_event(progress("device1", 2, 2, time.time()))   # and closes
        cpu = watch.cpu_per_iteration()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert cpu is not None
    assert cpu["devices", "wire"] == pytest.approx(0.3, abs=0.08)
    assert cpu["devices", "other"] == pytest.approx(0.2, abs=0.08)
    assert cpu["devices", "main"] < 0.05
    assert cpu["server", "workers"] == 0.0
