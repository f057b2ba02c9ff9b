"""Shared fixtures: a check that no agent process outlives a test."""

from __future__ import annotations

import os

import psutil
import pytest


def agent_processes() -> list[psutil.Process]:
    """Agent processes started by this test process (`python -m agents`)."""
    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.cmdline()[1:3] == ["-m", "agents"] and child.status() != "zombie":
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return found


@pytest.fixture
def no_leftover_agents():
    yield
    left = agent_processes()
    assert not left, f"agent processes left behind: {[p.pid for p in left]}"
