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


@pytest.fixture(autouse=True, scope="session")
def isolated_profile_store(tmp_path_factory):
    """Tests never read or write the user's ~/.edgectl/profiles (agents inherit this)."""
    store = tmp_path_factory.mktemp("profiles")
    old = os.environ.get("EDGECTL_PROFILES")
    os.environ["EDGECTL_PROFILES"] = str(store)
    yield store
    if old is None:
        del os.environ["EDGECTL_PROFILES"]
    else:
        os.environ["EDGECTL_PROFILES"] = old


@pytest.fixture
def no_leftover_agents():
    yield
    left = agent_processes()
    assert not left, f"agent processes left behind: {[p.pid for p in left]}"
