"""Provisioning: install the agents on every remote host, once per change of the source.

On each SSH host, under its `edgectl_workdir`:

    venv/               python -m venv --system-site-packages, made with edgectl_python, so
                        a host whose Python already has torch (a Jetson) keeps using it;
                        made without pip and using the system's pip where it has one
                        (ensurepip costs 18 s on a 0.5-core testbed device), else ensurepip
    wheels/             the uploaded edgectl wheel
    provisioned.json    the source digest installed and the versions the check reported
    runs/               what the server agent writes during runs (the final model)

The wheel installs with --no-deps, then only what the agents import (AGENT_REQUIREMENTS),
so devices never install the coordinator's CLI libraries; `dp` adds opacus (DP_REQUIREMENTS),
which only --dp runs import. A run with nothing changed
finds the same source digest and a working venv, and does nothing. Local hosts run the
agents from this checkout and need nothing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from edgectl.errors import FleetError
from edgectl.fleet.hosts import HostResult, HostSession, on_hosts
from edgectl.fleet.inventory import Host
from edgectl.fleet.layout import PROJECT_ROOT, remote_path, venv_python

PACKAGES = ("agents", "edgectl", "partitions", "profiles")
AGENT_REQUIREMENTS = ("torch>=2.1", "numpy>=1.24", "psutil>=5.9", "safetensors>=0.4",
                      "pillow>=9")
DP_REQUIREMENTS = ("opacus>=1.6",)   # pyproject's [dp] extra

# Runs on the host with the venv's Python: imports the agents and trains nothing, but runs
# a real forward pass, so a broken torch install shows up here rather than mid-run.
VERIFY_SCRIPT = """
import json, platform
import torch
import edgectl, agents.device, agents.server
from partitions.zoo import build_model
out = build_model("vgg5", (1, 28, 28), 10)(torch.zeros(2, 1, 28, 28))
assert tuple(out.shape) == (2, 10), out.shape
try:   # installed or not, without importing it (opacus takes seconds to import)
    from importlib.metadata import version
    dp = version("opacus")
except Exception:
    dp = None
print(json.dumps({"edgectl": edgectl.__version__, "torch": torch.__version__,
                  "python": platform.python_version(), "opacus": dp}))
"""


@dataclass(frozen=True)
class Provisioned:
    action: str           # "installed", "up to date" or "local"
    versions: dict


def source_digest() -> str:
    """sha256 over the packages' sources and pyproject.toml: what a host must match."""
    h = hashlib.sha256()
    files = sorted(p for pkg in PACKAGES for p in (PROJECT_ROOT / pkg).rglob("*.py"))
    for path in [*files, PROJECT_ROOT / "pyproject.toml"]:
        h.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class _Wheel:
    """Builds the project's wheel once, on first need, shared by all hosts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="edgectl-wheel-")
        self._path: Path | None = None

    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                       "-q", "-w", self._dir.name, str(PROJECT_ROOT)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                    raise FleetError(f"building the edgectl wheel failed: {tail[0]}")
                self._path = next(Path(self._dir.name).glob("edgectl-*.whl"))
            return self._path

    def cleanup(self) -> None:
        self._dir.cleanup()


def _installed_state(s: HostSession) -> dict:
    result = s.run(f"cat {remote_path(s.host.workdir + '/provisioned.json')}")
    try:
        return json.loads(result.stdout) if result.code == 0 else {}
    except ValueError:
        return {}


def verify(s: HostSession) -> dict:
    out = s.check(f"{remote_path(venv_python(s.host))} -", "verifying the agents",
                  stdin=VERIFY_SCRIPT)
    return json.loads(out.strip().splitlines()[-1])


def provision_host(host: Host, digest: str, wheel: _Wheel, dp: bool = False) -> Provisioned:
    if host.is_local:
        return Provisioned("local", {})
    with HostSession(host) as s:
        if _installed_state(s).get("digest") == digest:
            try:
                versions = verify(s)
                if versions.get("opacus") or not dp:
                    return Provisioned("up to date", versions)
            except FleetError:
                pass  # the venv broke since (or lacks opacus for --dp): install again
        work, py = host.workdir.rstrip("/"), remote_path(venv_python(host))
        s.check(f"mkdir -p {remote_path(work + '/wheels')} {remote_path(work + '/runs')}",
                "creating the workdir")
        remote_wheel = f"{work}/wheels/{wheel.path().name}"
        s.put(str(wheel.path()), remote_wheel)
        s.check(f"[ -x {py} ] || {shlex.quote(host.python)} -m venv --without-pip "
                f"--system-site-packages {remote_path(work + '/venv')}", "creating the venv")
        s.check(f"{py} -m pip --version >/dev/null 2>&1 || {py} -m ensurepip -q",
                "installing pip into the venv")
        pip = f"{py} -m pip install -q --disable-pip-version-check"
        s.check(f"{pip} --no-deps --force-reinstall {remote_path(remote_wheel)}",
                "installing edgectl")
        reqs = " ".join(shlex.quote(r) for r in AGENT_REQUIREMENTS
                        + (DP_REQUIREMENTS if dp else ()))
        s.check(f"{pip} {reqs} {host.pip_args or ''}", "installing the agents' requirements")
        versions = verify(s)
        state = json.dumps({"digest": digest, "versions": versions})
        s.check(f"cat > {remote_path(work + '/provisioned.json')}", "recording the install",
                stdin=state)
        return Provisioned("installed", versions)


def provision(hosts: list[Host], dp: bool = False) -> list[HostResult]:
    """Install the agents on every SSH host; with `dp`, also what --dp runs need."""
    digest, wheel = source_digest(), _Wheel()
    try:
        return on_hosts(hosts, lambda h: provision_host(h, digest, wheel, dp))
    finally:
        wheel.cleanup()
