"""bench/server_workers.py: each way runs its server parts and reports one median each."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("server_workers_bench",
                                                  ROOT / "bench" / "server_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("way", "parts"), [("alone", 1), ("threads", 2), ("processes", 2)])
def test_each_way_times_its_parts(bench, way: str, parts: int) -> None:
    medians = bench.run_way(way, split=2, microbatch=4, seconds=0.2, start_delay=0.0)
    assert len(medians) == parts
    assert all(0 < m < 1000 for m in medians), medians
