"""Where edgectl's files live: this checkout, and the working directory on each host.

Local hosts run the agents from this checkout (`PROJECT_ROOT`) with this interpreter or
their `edgectl_python`; SSH hosts run them from the venv that provisioning made under
their `edgectl_workdir`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from edgectl.fleet.inventory import Host

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # this checkout, where local agents run


def local_python(host: Host) -> str:
    """The interpreter for a local agent: edgectl_python if set, else this one."""
    return sys.executable if host.python in ("python3", "python") else host.python


def venv_python(host: Host) -> str:
    return f"{host.workdir.rstrip('/')}/venv/bin/python"


def agent_command(host: Host) -> str:
    return (f"cd {remote_path(host.workdir)} && "
            f"exec {remote_path(venv_python(host))} -m agents")


def remote_path(path: str) -> str:
    """Quote a path for a remote shell, keeping a leading ~/ expandable."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"' + ("/" + shlex.quote(rest) if rest else "")
    return shlex.quote(path)


def sftp_path(path: str) -> str:
    """SFTP paths are relative to the login directory; it does not expand ~."""
    return path[2:] if path.startswith("~/") else path
