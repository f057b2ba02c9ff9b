"""The server's compute workers: sizing, per-worker order, errors, and parallel evaluation."""

from __future__ import annotations

import threading

import pytest
import torch

from agents.stage import evaluate
from agents.workers import Workers, threads_per_worker, worker_count, worker_of
from partitions.zoo import build_model


@pytest.mark.parametrize(("cores", "devices", "expected"), [(2, 2, 2), (2, 5, 2), (8, 3, 3),
                                                            (1, 4, 1), (4, 0, 1)])
def test_one_worker_per_core_never_more_than_devices(cores, devices, expected):
    assert worker_count(cores, devices) == expected


def test_threads_share_the_cores_unless_fixed():
    assert threads_per_worker(8, 2) == 4
    assert threads_per_worker(2, 2) == 1
    assert threads_per_worker(3, 2) == 1
    assert threads_per_worker(8, 2, fixed=1) == 1


def test_devices_are_bound_round_robin():
    assert [worker_of(k, 2) for k in range(5)] == [0, 1, 0, 1, 0]


def test_each_workers_tasks_run_in_submission_order_on_its_own_thread():
    workers = Workers(2)
    seen: dict[int, list] = {0: [], 1: []}
    names: dict[int, set] = {0: set(), 1: set()}

    def record(w: int, i: int) -> None:
        seen[w].append(i)
        names[w].add(threading.current_thread().name)

    for i in range(50):
        workers.submit(i % 2, record, i % 2, i)
    workers.drain()
    workers.close()
    assert seen[0] == list(range(0, 50, 2)) and seen[1] == list(range(1, 50, 2))
    assert len(names[0]) == len(names[1]) == 1 and names[0] != names[1]


def test_an_error_is_reported_once_and_raised_by_drain():
    reported = []
    workers = Workers(2, reported.append)

    def fail() -> None:
        raise ValueError("bad activation")

    workers.submit(1, fail)
    with pytest.raises(ValueError, match="bad activation"):
        workers.drain()
    workers.close()
    assert [str(e) for e in reported] == ["bad activation"]


def test_evaluation_spread_over_workers_equals_the_sequential_one():
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10)
    xs, ys = torch.randn(230, 1, 28, 28), torch.randint(0, 10, (230,))
    workers = Workers(2)
    spread = evaluate(model, xs, ys, batch_size=50, map_batches=workers.map)
    workers.close()
    assert spread == pytest.approx(evaluate(model, xs, ys, batch_size=50), rel=1e-6)
    assert model.training
