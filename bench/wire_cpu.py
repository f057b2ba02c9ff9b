"""Benchmark: a testbed device's CPU per MB it receives and sends through agents.wire.

    python3 bench/wire_cpu.py [--quota 0.1] [--link 10mbit] [--frame 800000]
                              [--frames 20] [--repeats 2]

Needs root. Brings up a throwaway testbed (a 1-core server, one device at --quota cores,
the link --link each way, as `edgectl testbed up --link` shapes it) and, over SSH so each
side lands in its host's cgroup as an agent does, connects a `Connection` from the device
to the server: the server sends --frames tensor frames of --frame bytes (gradients) as
fast as the link takes them, then the device sends as many up (activations). The device
reports its process CPU (every thread) per MB received and per MB sent, and the reads per
frame of each side's receiver; the link's rate each way as the device saw it.

Two ways of reading, interleaved --repeats times in the same testbed: "per packet" (the
receiver wakes as any byte arrives, as agents.wire read before its WakeMark) and "marked"
(the receiver wakes once up to WAKE_BYTES of what it waits for are in; what agents do).
Takes the testbed down at the end, also when killed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgectl.cli.app import interrupt_on_sigterm  # noqa: E402
from edgectl.fleet.hosts import HostSession  # noqa: E402
from edgectl.fleet.inventory import load_inventory  # noqa: E402
from edgectl.fleet.layout import remote_path  # noqa: E402
from edgectl.network.testbed import TestbedSpec, testbed_down, testbed_up  # noqa: E402

PORT = 47812
WAYS = {"per packet": False, "marked": True}

# Both sides: the agents' own setup and wire; each read of a socket counted.
COMMON = """
import json, socket, sys, time
sys.path.insert(0, {root!r})
from profiles.host import keep_freed_memory
keep_freed_memory()
import torch
torch.set_num_threads(1)
from agents import wire
if not {marked}:
    wire.WakeMark.wait_for = lambda self, n: None
reads, wait = [0], wire._wait_readable
def counted(sock, timeout):
    reads[0] += 1
    return wait(sock, timeout)
wire._wait_readable = counted
count, numel = {frames}, {numel}
"""

SERVER = COMMON + """
listener = socket.create_server(("0.0.0.0", {port}))
listener.settimeout(120)
sock, _ = listener.accept()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn = wire.Connection(sock, "device")
g = torch.randn(numel)
for i in range(count):
    conn.send(wire.Frame(wire.MsgType.GRADIENT, {{"i": i}}, {{"g": g}}))
for i in range(count):
    conn.recv(timeout=300)
conn.send(wire.Frame(wire.MsgType.DONE))
conn.close()
print(json.dumps({{"reads": reads[0]}}))
"""

DEVICE = COMMON + """
for attempt in range(100):
    try:
        sock = socket.create_connection(({server!r}, {port}), timeout=5)
        break
    except OSError:
        time.sleep(0.2)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn = wire.Connection(sock, "server")
a = torch.randn(numel)
conn.recv(timeout=300)   # the first frame: the clocks start once the stream runs
reads[0], cpu, wall = 0, time.process_time(), time.time()
for i in range(count - 1):
    conn.recv(timeout=300)
down = {{"cpu": time.process_time() - cpu, "wall": time.time() - wall, "reads": reads[0]}}
cpu, wall = time.process_time(), time.time()
for i in range(count):
    conn.send(wire.Frame(wire.MsgType.ACTIVATION, {{"i": i}}, {{"a": a}}))
conn.recv(timeout=300)   # DONE: the server has every frame
up = {{"cpu": time.process_time() - cpu, "wall": time.time() - wall}}
conn.close()
print(json.dumps({{"down": down, "up": up}}))
"""


def one_run(inventory, root: str, args, marked: bool) -> dict:
    """One exchange; per MB received and sent: the device's CPU ms and the link's Mbit/s,
    and the reads per frame of each receiver."""
    server, device = inventory.server, inventory.devices[0]
    fmt = dict(root=root, marked=marked, frames=args.frames, numel=args.frame // 4, port=PORT,
               server=server.address)
    out: dict = {}

    def serve() -> None:
        try:
            with HostSession(server) as s:
                out["server"] = json.loads(s.check(f"{remote_path(server.python)} -",
                                                   "serving frames", stdin=SERVER.format(**fmt))
                                           .strip().splitlines()[-1])
        except Exception as e:   # handed to the main thread
            out["error"] = e

    thread = threading.Thread(target=serve)
    thread.start()
    with HostSession(device) as s:
        dev = json.loads(s.check(f"{remote_path(device.python)} -", "exchanging frames",
                                 stdin=DEVICE.format(**fmt)).strip().splitlines()[-1])
    thread.join()
    if "error" in out:
        raise out["error"]
    mb_down, mb_up = (args.frames - 1) * args.frame / 1e6, args.frames * args.frame / 1e6
    return {"down_ms_mb": dev["down"]["cpu"] * 1e3 / mb_down,
            "down_mbit": mb_down * 8 / dev["down"]["wall"],
            "down_reads": dev["down"]["reads"] / (args.frames - 1),
            "up_ms_mb": dev["up"]["cpu"] * 1e3 / mb_up,
            "up_mbit": mb_up * 8 / dev["up"]["wall"],
            "server_reads": out["server"]["reads"] / args.frames}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quota", type=float, default=0.1, help="the device's cores")
    p.add_argument("--link", default="10mbit", help="the link's rate each way (tc's units)")
    p.add_argument("--frame", type=int, default=800_000,
                   help="bytes of tensor per frame (800 KB: VGG-5's activation at p=1 with "
                        "8 CIFAR samples)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.frames < 2 or args.frame < 4 or args.repeats < 1:
        p.error("--frames must be at least 2, --frame at least 4 bytes, --repeats at least 1")
    interrupt_on_sigterm()   # a killed benchmark still takes its testbed down
    state = tempfile.mkdtemp(prefix="edgectl-wirecpu-")
    root = str(Path(__file__).resolve().parent.parent)
    bed = testbed_up(TestbedSpec("wirecpu", devices=1, device_cpu=(args.quota,), server_cpu=1,
                                 link=args.link, state_dir=state))
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    try:
        inventory = load_inventory(bed.inventory_path)
        for _ in range(args.repeats):
            for way, marked in WAYS.items():
                runs[way].append(one_run(inventory, root, args, marked))
    finally:
        testbed_down(bed.name, state)   # if this fails, the state stays for `testbed down`
        shutil.rmtree(state, ignore_errors=True)
    print(f"{args.frames} frames of {args.frame} B each way over {args.link}; the device at "
          f"{args.quota} cores, the server at 1; medians of {args.repeats} (each run)")
    columns = (("down_ms_mb", "CPU ms/MB received", 2), ("down_reads", "reads/frame", 1),
               ("down_mbit", "Mbit/s down", 1), ("up_ms_mb", "CPU ms/MB sent", 2),
               ("up_mbit", "Mbit/s up", 1), ("server_reads", "server reads/frame", 1))
    print(f"{'reading':<12}" + "".join(f"{title:>30}" for _, title, _ in columns))
    for way, rows in runs.items():
        cells = []
        for key, _, digits in columns:
            values = [r[key] for r in rows]
            each = ", ".join(f"{v:.{digits}f}" for v in values)
            cells.append(f"{statistics.median(values):.{digits}f} ({each})")
        print(f"{way:<12}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
