"""The testbed tests need root, iproute2 and openssh-server; they skip without them.

Tests marked `testbed` create real namespaces, a bridge, cgroups and sshd processes. Off
root (a developer's laptop) they skip with the reason. CI runs as root with both packages
installed (.ci/setup.sh), so there a missing tool fails the tests instead of hiding them.
"""

from __future__ import annotations

import os
import shutil

import pytest

from edgectl.network.testbed_net import SSHD


def testbed_unavailable() -> str | None:
    """Why the testbed tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return ("testbed tests need root (network namespaces, a bridge, cgroups, sshd); "
                "run pytest as root")
    missing = [tool for tool in ("ip", "tc", "ssh-keygen") if shutil.which(tool) is None]
    missing += [] if os.access(SSHD, os.X_OK) else [SSHD]
    if missing:
        return (f"testbed tests need {', '.join(missing)}: "
                "apt-get install iproute2 openssh-server")
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("testbed") is None:
        return
    reason = testbed_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(f"CI runs as root, so the testbed tests must run: {reason}")
    pytest.skip(reason)
