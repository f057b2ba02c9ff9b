"""Benchmark: how long a testbed device's messages take, one way and both ways at once.

    python3 bench/link_duplex.py [--quota 0.1] [--link 10mbit] [--size 138000]
                                 [--messages 20] [--gap 0.15] [--rcvbuf BYTES]
                                 [--quickack] [--pacing FACTOR] [--cc NAME]
                                 [--case DEV,DOES,TRAFFIC ...] [--sysctl KEY=VALUE ...]

Needs root. Brings up a throwaway testbed (a 1-core server; d1 at --quota cores, d2
unthrottled; every link --link each way, as `edgectl testbed up --link` shapes it), then,
over SSH so each side lands in its host's cgroup as an agent does, opens one TCP
connection from each device to the server and times messages of --size bytes (an
activation's or a gradient's frame; 138 KB is VGG-5's at p=2 with 11 samples) sent every
--gap seconds: server -> device alone ("down"), and both ways at once ("both"), with the
device idle or training (a thread running forward and backward of VGG-5's second block at
B = 32 on one torch thread, in a loop, as a device agent's compute thread does between its
frames). Per case it prints the median and the largest time a message took, send start
to its last byte read (one host clock: the testbed's hosts are namespaces of this
machine), against the link's own time for it, and how many took over 1.5x that. Takes
the testbed down at the end, also when killed.

The planner prices a transfer as its bytes over the link's rate in that direction,
whatever else the connection carries. Where this shows messages taking longer than that,
pipelined plans (which send activations up while gradients come down) are predicted too
fast. The knobs try causes: --rcvbuf (a fixed receive buffer instead of autotuning),
--quickack (receivers acknowledge at once, not after the delayed-ACK timer), --sysctl
(e.g. net.ipv4.tcp_slow_start_after_idle=0, set in every host's namespace), --pacing
(both ends' TCP paces its sends to a multiple of the link rate, SO_MAX_PACING_RATE), --cc
(both ends' congestion control instead of the kernel's default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgectl.cli.app import interrupt_on_sigterm  # noqa: E402
from edgectl.fleet.hosts import HostSession  # noqa: E402
from edgectl.fleet.inventory import load_inventory  # noqa: E402
from edgectl.fleet.layout import remote_path  # noqa: E402
from edgectl.network.tc import rate_bits  # noqa: E402
from edgectl.network.testbed import TestbedSpec, testbed_down, testbed_up  # noqa: E402

PORT = 47811

# Both sides: each message is an 8-byte send time and filler; a side that sends, sends one
# every `gap` s from its own thread; a side that receives times each message's arrival.
COMMON = """
import json, socket, struct, sys, threading, time
size, count, gap, rcvbuf, quickack = {size}, {count}, {gap}, {rcvbuf}, {quickack}
pacing, cc = {pacing}, {cc!r}

def tune(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if pacing:   # SO_MAX_PACING_RATE (47), bytes/s: the kernel's TCP paces to it
        s.setsockopt(socket.SOL_SOCKET, 47, pacing)

def sender(s):
    filler = bytes(size - 8)
    for _ in range(count):
        s.sendall(struct.pack("d", time.time()) + filler)
        time.sleep(gap)

def receiver(s, took):
    buf = bytearray(size)
    view = memoryview(buf)
    for _ in range(count):
        got = 0
        while got < size:
            if quickack:   # Linux clears it as it acks: set before every read
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            n = s.recv_into(view[got:])
            if not n:
                return
            got += n
        took.append(time.time() - struct.unpack("d", bytes(buf[:8]))[0])
"""

SERVER = COMMON + """
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if rcvbuf:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
listener.bind(("0.0.0.0", {port}))
listener.listen(1)
listener.settimeout(120)
s, _ = listener.accept()
tune(s)
took = []
rx = threading.Thread(target=receiver, args=(s, took)) if {both} else None
if rx:
    rx.start()
sender(s)
if rx:
    rx.join()
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(json.dumps(took))
"""

DEVICE = COMMON + """
if {busy}:
    import torch
    sys.path.insert(0, {root!r})
    from partitions.zoo import build_model
    torch.set_num_threads(1)
    block = build_model("vgg5", (1, 28, 28), 10).blocks
    first, second = list(block.values())[:2]
    x = first(torch.randn(32, 1, 28, 28)).detach()

    def train():
        while True:
            out = second(x)
            out.backward(torch.ones_like(out))

    threading.Thread(target=train, daemon=True).start()
    time.sleep(1.0)   # the loop is running before the first message
for attempt in range(100):
    try:
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(5)
        s.connect(({server!r}, {port}))
        break
    except OSError:
        time.sleep(0.2)
tune(s)
s.settimeout(None)
took = []
tx = threading.Thread(target=sender, args=(s,)) if {both} else None
if tx:
    tx.start()
receiver(s, took)
if tx:
    tx.join()
s.shutdown(socket.SHUT_WR)
print(json.dumps(took), flush=True)
import os
os._exit(0)   # the training thread never ends; leave without tearing torch down under it
"""


def one_case(server, device, root: str, args, both: bool, busy: bool) -> dict:
    """Run one case; {"down": seconds per message, "up": ... when both}."""
    fmt = dict(size=args.size, count=args.messages, gap=args.gap, rcvbuf=args.rcvbuf,
               quickack=args.quickack, port=PORT, both=both, busy=busy, root=root,
               server=server.address, cc=args.cc,
               pacing=int(args.pacing * rate_bits(args.link) / 8))
    results: dict = {}

    def run_server() -> None:
        with HostSession(server) as s:
            results["up"] = json.loads(s.check(f"{remote_path(server.python)} -",
                                               "serving messages", stdin=SERVER.format(**fmt)))

    thread = threading.Thread(target=run_server)
    thread.start()
    with HostSession(device) as s:
        results["down"] = json.loads(s.check(f"{remote_path(device.python)} -",
                                             "receiving messages", stdin=DEVICE.format(**fmt)))
    thread.join()
    if not both:
        results.pop("up", None)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quota", type=float, default=0.1)
    p.add_argument("--link", default="10mbit")
    p.add_argument("--size", type=int, default=138_000)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.15)
    p.add_argument("--rcvbuf", type=int, default=0,
                   help="SO_RCVBUF of both ends, bytes (0: the kernel's autotuning)")
    p.add_argument("--quickack", action="store_true",
                   help="receivers set TCP_QUICKACK before every read (no delayed acks)")
    p.add_argument("--pacing", type=float, default=0.0, metavar="FACTOR",
                   help="both ends pace their sends (SO_MAX_PACING_RATE) to FACTOR x --link "
                        "(0: no pacing)")
    p.add_argument("--cc", default="",
                   help="both ends' TCP congestion control (default: the kernel's)")
    p.add_argument("--case", action="append", default=[], metavar="DEV,DOES,TRAFFIC",
                   help="run only this case, e.g. d1,idle,down (repeatable; default all eight)")
    p.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                   help="set in every testbed host's network namespace first (repeatable)")
    args = p.parse_args()
    cases = [f"{dev},{does},{traffic}" for dev in ("d1", "d2") for does in ("idle", "training")
             for traffic in ("down", "both")]
    unknown = [c for c in args.case if c not in cases]
    if unknown:
        p.error(f"--case {unknown[0]} is not a case; give one of {', '.join(cases)}")
    link_s = args.size * 8 / rate_bits(args.link)
    interrupt_on_sigterm()  # a killed benchmark still takes its testbed down
    state = tempfile.mkdtemp(prefix="edgectl-duplex-")
    root = str(Path(__file__).resolve().parent.parent)
    bed = testbed_up(TestbedSpec("duplex", devices=2, device_cpu=(args.quota, os.cpu_count()),
                                 server_cpu=1, link=args.link, state_dir=state))
    rows = []
    try:
        inventory = load_inventory(bed.inventory_path)
        for setting in args.sysctl:
            for host in bed.hosts:
                subprocess.run(["ip", "netns", "exec", host.namespace, "sysctl", "-qw", setting],
                               check=True)
        for device in inventory.devices:
            for busy in (False, True):
                for both in (False, True):
                    does, traffic = "training" if busy else "idle", "both" if both else "down"
                    if args.case and f"{device.name},{does},{traffic}" not in args.case:
                        continue
                    r = one_case(inventory.server, device, root, args, both, busy)
                    rows.append((device.name, does, traffic, r))
    finally:
        testbed_down(bed.name, state)  # if this fails, the state stays for `testbed down`
        shutil.rmtree(state, ignore_errors=True)
    print(f"{args.size} B messages every {args.gap} s over {args.link} each way "
          f"({link_s * 1e3:.1f} ms on the link alone); d1 at {args.quota} cores, d2 "
          "unthrottled; median (largest) ms per message, send start to last byte read, "
          "and how many took over 1.5x the link's time")
    print(f"{'device':<8}{'device does':<13}{'traffic':<9}{'down ms':>24}{'up ms':>24}")
    for name, does, traffic, r in rows:
        cells = []
        for key in ("down", "up"):
            took = r.get(key)
            slow = sum(t > 1.5 * link_s for t in took or ())
            cells.append(f"{statistics.median(took) * 1e3:.1f} ({max(took) * 1e3:.0f}) "
                         f"{slow}/{len(took)}" if took else "-")
        print(f"{name:<8}{does:<13}{traffic:<9}{cells[0]:>24}{cells[1]:>24}")


if __name__ == "__main__":
    main()
