"""Threads that the operating system knows by their names.

An agent runs a dozen threads: compute workers, a sender and a receiver per connection, an
event writer, a batch loader. Python names them, but the kernel sees every one as the
process ("python3"), so `top -H`, `ps -L` and /proc/PID/task/TID/comm cannot tell which of
them uses the CPU. `Thread` gives its OS thread the Python name (Linux keeps the first 15
bytes); `bench/floor.py` reads those names to split an agent's CPU by thread.
"""

from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15   # linux/prctl.h
OS_NAME_BYTES = 15   # TASK_COMM_LEN, less the NUL

try:
    _prctl = ctypes.CDLL(None).prctl
except Exception:   # noqa: BLE001 - not Linux (no prctl; Windows has no CDLL(None))
    _prctl = None


def name_os_thread(name: str) -> None:
    """Give the calling thread's OS thread `name` (truncated to 15 bytes); a no-op where
    the platform has no prctl."""
    if _prctl is not None:
        cut = name.encode("utf-8", "replace")[:OS_NAME_BYTES]
        cut = cut.decode("utf-8", "ignore").encode("utf-8")   # not half a character
        _prctl(PR_SET_NAME, cut, 0, 0, 0)


class Thread(threading.Thread):
    """A threading.Thread whose OS thread carries its name."""

    def run(self) -> None:
        name_os_thread(self.name)
        super().run()
