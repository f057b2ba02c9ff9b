"""agents.threads: an agent's threads carry their names down to the OS."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from agents.threads import Thread, name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="thread names in /proc are Linux's")


def os_name(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_bytes().decode().rstrip("\n")


def test_a_thread_is_known_to_the_os_by_its_name_cut_to_15_bytes() -> None:
    seen: list[str] = []
    thread = Thread(target=lambda: seen.append(os_name(threading.get_native_id())),
                    name="rx-127.0.0.1:41234")
    thread.start()
    thread.join()
    assert seen == ["rx-127.0.0.1:41"]


def test_a_plain_thread_keeps_the_process_name_and_naming_it_is_per_thread() -> None:
    main_name = os_name(threading.get_native_id())
    seen: list[tuple[str, str]] = []

    def run() -> None:
        before = os_name(threading.get_native_id())
        name_os_thread("worker")
        seen.append((before, os_name(threading.get_native_id())))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [(main_name, "worker")]
    assert os_name(threading.get_native_id()) == main_name   # the caller's own is untouched


def test_a_name_is_cut_on_a_character_boundary() -> None:
    seen: list[str] = []
    thread = Thread(target=lambda: seen.append(os_name(threading.get_native_id())),
                    name="tx-gerät-straße-1")   # byte 15 falls inside the "ß"
    thread.start()
    thread.join()
    assert seen == ["tx-gerät-stra"]
