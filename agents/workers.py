"""The server's compute workers: one thread per core it may use, each device bound to one.

The server trains a separate copy of blocks [p, L) per device, so the work of different
devices is independent and may run at the same time, while one device's micro-batches
must run in arrival order (their updates accumulate into one optimizer step). `Workers`
runs each submitted task on the worker its key is bound to, in submission order; tasks
of keys bound to different workers run in parallel. torch releases the GIL inside its
kernels, so threads suffice; the Python between kernels holds it, and two VGG-5 server
parts in two threads ran 3-6% slower than each alone at p = 1 and 16% at p = 2 on
micro-batches of 25-50 (0-3% at 100), in two processes -3% to +7%
(bench/server_workers.py, 5 December). Processes would also need the parts' weights
shared for aggregation: not worth it on this 2-core host; worth measuring again on a
server with many cores and devices.

How many workers (`worker_count`): one per core the server may use (its CPU affinity and
quota, `profiles.host.available_cores`), never more than there are devices; each runs its
kernels on `threads_per_worker` intra-op threads, the cores shared out between them
unless the launch settings fix the thread count. The planner (edgectl.planner) models the
server with the same numbers. Note: on the local fleet the server's workers share the
host's cores with the devices; pipelining keeps them from being busy at the same time.

A task that raises stops nothing else; its error is reported through `on_error` (the
server puts it in its inbox so the main loop wakes) and raised again by `drain`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from agents.threads import Thread

_STOP = object()


def worker_count(cores: int, devices: int) -> int:
    """Server compute workers: one per core, at most one per device, at least one."""
    return max(1, min(cores, devices))


def threads_per_worker(cores: int, workers: int, fixed: int = 0) -> int:
    """Intra-op threads of each worker: `fixed` when set, else an even share of the cores."""
    return fixed if fixed > 0 else max(1, cores // max(workers, 1))


def worker_of(device_index: int, workers: int) -> int:
    """The worker a device's server part is bound to: round robin in device order."""
    return device_index % workers


class Workers:
    """`count` threads, each running its own queue of tasks in order."""

    def __init__(self, count: int, on_error: Callable[[BaseException], None] = lambda e: None):
        self.on_error = on_error
        self.error: BaseException | None = None
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(count)]
        self._threads = [Thread(target=self._loop, args=(q,), daemon=True,
                                name=f"server-worker-{i}")
                         for i, q in enumerate(self._queues)]
        for t in self._threads:
            t.start()

    @property
    def count(self) -> int:
        return len(self._queues)

    def submit(self, worker: int, task: Callable[..., object], *args: object) -> None:
        """Run task(*args) on `worker`, after every task submitted to it before."""
        self._queues[worker].put((task, args))

    def drain(self) -> None:
        """Wait until every submitted task has run; raise the first error one raised."""
        for q in self._queues:
            q.join()
        if self.error is not None:
            raise self.error

    def map(self, task: Callable[..., object], items: list) -> list:
        """task(item) for every item, spread over the workers; results in item order."""
        results: list = [None] * len(items)

        def run(i: int) -> None:
            results[i] = task(items[i])

        for i in range(len(items)):
            self.submit(i % self.count, run, i)
        self.drain()
        return results

    def close(self) -> None:
        for q in self._queues:
            q.put(_STOP)

    def _loop(self, tasks: queue.Queue) -> None:
        while (item := tasks.get()) is not _STOP:
            task, args = item
            try:
                if self.error is None:
                    task(*args)
            except BaseException as e:  # noqa: BLE001 - reported to the main loop, re-raised
                if self.error is None:
                    self.error = e
                    self.on_error(e)
            finally:
                tasks.task_done()
