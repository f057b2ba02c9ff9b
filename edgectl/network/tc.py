"""The tc side of shaping: values checked, qdisc trees built as argv lists, tc run on a host.

The builders are pure: edgectl/network/shaping.py runs what they build on the hosts through
`TcRunner`, and the testbed's --link (edgectl/network/testbed_net.py) builds its tbf with
`tbf_args`, so both share one rate syntax and one burst rule.

Note: the tree. Each shaped direction is an htb root (handle ec:) whose `default 0` sends
every packet no filter claims to htb's direct queue, unshaped. Filters claim IPv4 and IPv6
traffic for the shaped class ec:1, except TCP with source or destination port 22 (prio 1
and 2, flowid ec:0 = direct): the SSH control channel and the agents' stdout streams keep
the full link while the agents' own protocol (and anything else IP) is limited. ARP and
neighbour discovery go direct too. The uplink tree sits on the device's edgectl_iface
egress; the downlink tree sits on an ifb device that the iface's ingress qdisc redirects
every arriving packet to, so a device's shaping lives entirely on that device.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence

from edgectl.errors import FleetError
from edgectl.fleet.hosts import HostSession

ROOT = "ec:"  # the handle that marks edgectl's root qdisc (0xec)
TESTBED_ROOT = "ecb:"  # the testbed's --link tbf
SHAPED = "ec:1"
LEAF = "ec1:"
DIRECT = "ec:0"  # a filter's flowid for htb's direct (unshaped) queue
SSH_PORT = 22
MIN_BURST = 4 * 1514          # bytes: a few full-size Ethernet frames
MIN_LEAF_LIMIT = 128 * 1024   # bytes: see leaf_limit
# A netem-only uplink (no --up) still needs a class rate: one no device link reaches.
UNLIMITED = "100gbit"

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)", re.I)
_RATE_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
              "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
_TIME = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|usec|ms|msec|s|sec)")
_TIME_S = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}
_LOSS = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")


# --- values -----------------------------------------------------------------------------

def rate_bits(text: str) -> float | None:
    """A tc rate like "20mbit" in bits per second; None when it is not one."""
    match = _RATE.fullmatch(text.strip()) if isinstance(text, str) else None
    return float(match[1]) * _RATE_BITS[match[2].lower()] if match else None


def time_seconds(text: str) -> float | None:
    match = _TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    return float(match[1]) * _TIME_S[match[2]] if match else None


def rate_problem(value: object) -> str | None:
    bits = rate_bits(value) if isinstance(value, str) else None
    if bits is None or not 8_000 <= bits <= 100e9:
        return "a rate from 8kbit to 100gbit like 10mbit, 500kbit or 1gbit"
    return None


def time_problem(value: object) -> str | None:
    seconds = time_seconds(value) if isinstance(value, str) else None
    if seconds is None or seconds > 60:
        return "a time up to 60 s like 20ms, 500us or 1s"
    return None


def loss_problem(value: object) -> str | None:
    match = _LOSS.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not 0 < float(match[1]) <= 100:
        return "a percentage above 0 up to 100 like 0.5%"
    return None


def burst_bytes(rate: str) -> int:
    """The bucket of a tbf or htb class at `rate` (see tbf_args): 4 ms of traffic, at
    least a few full-size packets. A bigger bucket is a burst a real link of that rate
    does not have: with 32 KiB, a 100 KB frame after a pause crossed a 2 Mbit/s link at
    2.8 Mbit/s (the testbed's own GSO limit, testbed_net.add_veth, removes the rest)."""
    return max(int(rate_bits(rate) / 8 / 250), MIN_BURST)


# --- trees ------------------------------------------------------------------------------

def tbf_args(rate: str) -> list[str]:
    """A tbf of `rate` (what follows `tc qdisc add dev DEV root`): the testbed's --link,
    which emulates the link itself, so unlike `edgectl shape` it slows SSH too.

    burst: tbf can send at most `burst` bytes per timer tick, so it must hold at least one
    tick of traffic at the rate; rate/250 covers the coarsest common tick (HZ=250, 4 ms).
    limit: 50 ms at the rate plus the bucket, at least MIN_LEAF_LIMIT (see leaf_limit):
    deep enough that a TCP window arriving at once waits rather than being dropped, shallow
    enough that a fast link does not add bufferbloat to every RTT probe.
    """
    burst = burst_bytes(rate)
    limit = max(int(rate_bits(rate) / 8 * 0.05) + burst, MIN_LEAF_LIMIT)
    return ["handle", TESTBED_ROOT, "tbf", "rate", rate, "burst", str(burst), "limit",
            str(limit)]


def netem_args(delay: str | None, jitter: str | None, loss: str | None) -> list[str]:
    args = ["netem"]
    if delay:
        args += ["delay", delay] + ([jitter] if jitter else [])
    if loss:
        args += ["loss", loss]
    return args


def leaf_limit(rate: str) -> int:
    """Bytes the shaped class may queue: 100 ms at the rate, at least 128 KiB (two 64 KiB
    GSO/GRO packets). With 64 KiB a 1-2 Mbit/s uplink measured a third of its rate (a
    sender's drops in its own qdisc cut its TCP window hard); more queue adds delay to the
    agents' messages: 128 KiB is ~1 s at 1 Mbit/s, 100 ms from 10 Mbit/s up."""
    return max(int(rate_bits(rate) / 8 * 0.1), MIN_LEAF_LIMIT)


def quantum_bytes(rate: str) -> int:
    """htb's default (rate / r2q 10) kept within 1600..200000, where the kernel warns."""
    return min(max(int(rate_bits(rate) / 8 / 10), 1600), 200_000)


def htb_tree(dev: str, rate: str, netem: Sequence[str] | None = None) -> list[list[str]]:
    """tc argvs that shape every non-SSH IP packet leaving `dev` to `rate` (see the Note).

    burst = cburst = burst_bytes(rate): htb lets a class send a packet larger than its
    bucket (its tokens go negative) rather than drop it, so the bucket only sets how far
    the rate may run ahead; one 4 ms tick of traffic, at least a 32 KiB GSO packet, keeps
    the class busy between timer wake-ups without a visible initial spike in a 2 s probe.
    """
    burst = str(burst_bytes(rate))
    leaf = list(netem) if netem else ["bfifo", "limit", str(leaf_limit(rate))]
    tree = [
        # direct_qlen: the unshaped queue's length would be the device's txqueuelen,
        # only 32 packets on an ifb, too few for SSH arriving in bursts
        ["qdisc", "add", "dev", dev, "root", "handle", ROOT, "htb", "default", "0",
         "direct_qlen", "1000"],
        ["class", "add", "dev", dev, "parent", ROOT, "classid", SHAPED, "htb", "rate", rate,
         "ceil", rate, "burst", burst, "cburst", burst, "quantum", str(quantum_bytes(rate))],
        ["qdisc", "add", "dev", dev, "parent", SHAPED, "handle", LEAF, *leaf],
    ]
    for prio, family, ip in ((1, "ip", "ip"), (2, "ipv6", "ip6")):
        for port in ("sport", "dport"):
            tree.append(["filter", "add", "dev", dev, "parent", ROOT, "prio", str(prio),
                         "protocol", family, "u32", "match", ip, "protocol", "6", "0xff",
                         "match", ip, port, str(SSH_PORT), "0xffff", "flowid", DIRECT])
    for prio, family in ((3, "ip"), (4, "ipv6")):
        tree.append(["filter", "add", "dev", dev, "parent", ROOT, "prio", str(prio),
                     "protocol", family, "u32", "match", "u32", "0", "0", "flowid", SHAPED])
    return tree


def ifb_name(iface: str) -> str:
    return f"ecifb-{iface}"[:15]


def ifb_create(ifb: str) -> list[list[str]]:
    """ip argvs making the ifb device the downlink tree hangs on."""
    return [["link", "add", ifb, "type", "ifb"], ["link", "set", ifb, "up"]]


def ingress_redirect(dev: str, ifb: str) -> list[list[str]]:
    """tc argvs sending every packet arriving on `dev` through `ifb`'s egress first."""
    return [["qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
            ["filter", "add", "dev", dev, "parent", "ffff:", "prio", "1", "protocol", "all",
             "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
             "dev", ifb]]


# --- reading qdiscs back ------------------------------------------------------------------

def parse_qdiscs(text: str) -> list[dict]:
    """`tc -j qdisc show dev DEV` as a list (older tc prints nothing for no qdiscs)."""
    return json.loads(text) if text.strip() else []


def root_of(qdiscs: list[dict]) -> dict | None:
    return next((q for q in qdiscs if q.get("root")), None)


def ingress_of(qdiscs: list[dict]) -> dict | None:
    """The ingress or clsact qdisc (both hang at ffff:fff1), if any."""
    return next((q for q in qdiscs if q.get("parent") == "ffff:fff1"), None)


def is_edgectl_root(qdiscs: list[dict]) -> bool:
    root = root_of(qdiscs)
    return root is not None and root.get("handle") == ROOT and root.get("kind") == "htb"


def is_kernel_default(root: dict | None) -> bool:
    """No root, or one the kernel attached by itself (handle 0:): deleting edgectl's root
    brings exactly that back. A qdisc someone added has a non-zero handle (tc picks 8001:
    and up when none is given), even a fq_codel with its default parameters."""
    return root is None or root.get("handle") == "0:"


def describe(qdisc: dict | None) -> str:
    if qdisc is None:
        return "none"
    made_by = " (the testbed's --link rate)" if qdisc.get("handle") == TESTBED_ROOT else ""
    return f"{qdisc.get('kind')} {qdisc.get('handle')}{made_by}"


# --- running tc on a host ----------------------------------------------------------------

class TcRunner:
    """tc and ip on one device, through sudo -n where the login is not root."""

    def __init__(self, session: HostSession):
        self.session, self.host = session, session.host
        self.sudo = "" if self.host.user == "root" or self.host.is_local else "sudo -n "

    def script(self, lines: Sequence[Sequence[str]], what: str) -> None:
        """Run argvs ("tc ..." / "ip ...") as one shell script that stops at the first failure."""
        text = "set -e\n" + "".join(f"{self.sudo}{shlex.join(argv)}\n" for argv in lines)
        self._checked(self.session.run(text), what)

    def read(self, argv: Sequence[str], what: str) -> str:
        return self._checked(self.session.run(self.sudo + shlex.join(argv)), what)

    def _checked(self, result, what: str) -> str:
        if result.code == 0:
            return result.stdout
        self.refuse_sudo_password(result)
        text = result.stderr.strip() or result.stdout.strip() or f"exit {result.code}"
        raise FleetError(f"{self.host.name}: {what} failed: {text.splitlines()[-1]}")

    def refuse_sudo_password(self, result) -> None:
        """A FleetError when `result` failed because sudo wants a password."""
        text = result.stderr.lower()
        if self.sudo and result.code != 0 and "sudo" in text and "password" in text:
            raise FleetError(f"{self.host.name}: sudo asks {self.host.user} for a password; "
                             "allow passwordless sudo for tc and ip (sudoers: "
                             f"`{self.host.user} ALL=(root) NOPASSWD: /usr/sbin/tc, "
                             "/usr/sbin/ip, /usr/bin/unshare`)")

    def qdiscs(self, dev: str) -> list[dict]:
        return parse_qdiscs(self.read(["tc", "-j", "qdisc", "show", "dev", dev],
                                         f"reading the qdiscs of {dev}"))

    def qdisc_text(self, dev: str) -> str:
        return self.read(["tc", "qdisc", "show", "dev", dev], f"reading the qdiscs of {dev}")

    def link_exists(self, dev: str) -> bool:
        return self.session.run(f"ip link show dev {shlex.quote(dev)}").code == 0


def netem_available(session: HostSession) -> bool:
    """Whether the host's kernel has the netem qdisc: one is added to the loopback of a
    throwaway network namespace (`unshare -n`), so nothing on the host changes; where
    unshare is not allowed, whether the sch_netem module is loaded, built in or installed."""
    run = TcRunner(session)
    tried = session.run(f"{run.sudo}unshare -n tc qdisc add dev lo root netem delay 1ms")
    if tried.code == 0:
        return True
    if "unknown" in tried.stderr.lower():
        return False
    run.refuse_sudo_password(tried)
    found = session.run("test -d /sys/module/sch_netem || modinfo sch_netem >/dev/null 2>&1 "
                        "|| grep -qs sch_netem /lib/modules/$(uname -r)/modules.builtin")
    return found.code == 0
