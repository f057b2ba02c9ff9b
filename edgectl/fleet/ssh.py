"""SSH to inventory hosts: verified connections, one-line errors, host-key trust.

Every connection checks the host's key against the user's ~/.ssh/known_hosts plus the
host's `edgectl_known_hosts` file. An unknown or changed key is refused, never accepted
silently (fabric's default policy would add it); `edgectl hosts trust` is the one place a
key gets recorded, after its fingerprint has been shown.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko
from fabric import Connection

from edgectl.errors import FleetError
from edgectl.fleet.inventory import Host

CONNECT_TIMEOUT = 15
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"


def known_hosts_files(host: Host) -> list[Path]:
    files = [Path(USER_KNOWN_HOSTS).expanduser()]
    if host.known_hosts:
        files.append(Path(host.known_hosts).expanduser())
    return files


def host_key_name(host: Host) -> str:
    """The name known_hosts lists the host under (OpenSSH's [addr]:port for other ports)."""
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def connect(host: Host, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """An open, verified connection to `host`, or a FleetError saying what to fix."""
    kwargs: dict = {"allow_agent": True, "look_for_keys": host.key_file is None,
                    "banner_timeout": timeout, "auth_timeout": timeout}
    if host.key_file:
        if not Path(host.key_file).is_file():
            raise FleetError(f"{host.name}: key file {host.key_file} does not exist; fix "
                             "ansible_ssh_private_key_file in the inventory")
        kwargs["key_filename"] = host.key_file
    conn = Connection(host.address, user=host.user, port=host.port, connect_timeout=timeout,
                      connect_kwargs=kwargs)
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    for path in known_hosts_files(host):
        if path.is_file():
            conn.client.load_host_keys(str(path))
    try:
        conn.open()
    except Exception as e:
        conn.close()
        raise connect_error(host, e) from e
    return conn


def connect_error(host: Host, e: Exception) -> FleetError:
    where = f"{host.address}:{host.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return FleetError(
            f"{host.name}: host key of {where} CHANGED (now {fingerprint(e.key)}); this could "
            "be an attack. If the host was reinstalled, remove its old line from known_hosts "
            f"and run `edgectl hosts trust {host.name}`")
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return FleetError(f"{host.name}: host key of {where} is not known; check it and run "
                          f"`edgectl hosts trust {host.name}`")
    if isinstance(e, paramiko.AuthenticationException):
        key = host.key_file or "your default keys"
        return FleetError(f"{host.name}: SSH login as {host.user} at {where} failed with "
                          f"{key}; check ansible_user and ansible_ssh_private_key_file")
    if isinstance(e, socket.timeout | TimeoutError):
        return FleetError(f"{host.name}: {where} did not answer within {CONNECT_TIMEOUT} s; "
                          "is the host up and reachable?")
    if isinstance(e, OSError | paramiko.ssh_exception.NoValidConnectionsError):
        reason = getattr(e, "strerror", None) or str(e)
        return FleetError(f"{host.name}: cannot reach {where}: {reason}; is the host up and "
                          "sshd running?")
    return FleetError(f"{host.name}: SSH to {where} failed: {e}")


def fetch_host_key(host: Host, timeout: float = CONNECT_TIMEOUT) -> paramiko.PKey:
    """The key the host presents, read without logging in."""
    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
    except OSError as e:
        raise connect_error(host, e) from e
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except paramiko.SSHException as e:
        raise FleetError(f"{host.name}: {host.address}:{host.port} is not an SSH server: "
                         f"{e}") from e
    finally:
        transport.close()


def trust_file(host: Host) -> Path:
    """Where `hosts trust` records a key: the inventory's known_hosts, else the user's."""
    return Path(host.known_hosts or USER_KNOWN_HOSTS).expanduser()


def record_host_key(host: Host, key: paramiko.PKey) -> Path:
    path = trust_file(host)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = paramiko.HostKeys()
    if path.is_file():
        keys.load(str(path))
    keys.add(host_key_name(host), key.get_name(), key)
    keys.save(str(path))
    os.chmod(path, 0o600)
    return path
