"""Progress of the long steps of profiling: each host's compute, the links, the task
probes, calibration.

Profiling a fleet takes a minute or more (the local fleet: ~80 s); the functions that do it
take an `on_progress` callback and call it with a `Progress` as each step starts and as
its work gets done, so the command line can say what is happening and about how long is
left. Nothing here prints: `Progress.describe` is the one-line text a caller may show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Where one step of profiling stands.

    step: "compute" (a host's per-block timings), "links" (the link probe of every
    device), "tasks" (every device's task probe, agents.taskprobe) or "calibration" (the
    server's short calibration runs). host: the host being
    measured ("" when the step spans the fleet). part/parts: which of the step's hosts or
    runs this is (1-based) and how many there are. done/total: the work done of the current
    part's (block timings; devices probed; runs), total 0 while unknown. left_s: the
    estimated seconds left of the whole step, None while there is nothing to estimate from.
    """

    step: str
    host: str = ""
    part: int = 1
    parts: int = 1
    done: int = 0
    total: int = 0
    left_s: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.step == "compute":
            head = f"profiling compute on {self.host} (host {self.part}/{self.parts})"
            work = f"{self.done}/{self.total} block timings" if self.total else "starting"
        elif self.step in ("links", "tasks"):
            head = (f"profiling links of {self.total} device(s)" if self.step == "links" else
                    f"profiling the agents' cost per task on {self.total} device(s)")
            work = f"{self.done}/{self.total} probed" + (f", {self.host} done" if self.host
                                                        else "")
        else:
            head = f"calibrating: run {self.part}/{self.parts}"
            work = ""
        text = ": ".join(part for part in (head, work) if part)
        if self.note:
            text += f" ({self.note})"
        if self.left_s is not None:
            text += f", about {_duration(self.left_s)} left"
        return text


ProgressCallback = Callable[[Progress], None]


def no_progress(progress: Progress) -> None:
    """The default callback: nobody is listening."""


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


def time_left(elapsed_s: float, done: float, total: float) -> float | None:
    """The seconds left at the pace so far, or None before anything is done."""
    if done <= 0 or total <= 0:
        return None
    return elapsed_s / done * max(total - done, 0)


class StepClock:
    """Estimates the time left of a step of `parts` parts (hosts or runs) done one after
    another: the current part's rest at its pace since its first unit of work was done
    (a part's start, such as a process importing torch, says nothing of its pace), and
    each part still to come at the mean time of the parts done so far (before any is done:
    the current part's projected time)."""

    def __init__(self, parts: int, now: Callable[[], float] = time.monotonic):
        self.parts, self.now = parts, now
        self.finished, self.finished_s = 0, 0.0
        self.start_part()

    def start_part(self) -> None:
        self.part_started, self.first = self.now(), None   # first: (time, done) first heard

    def end_part(self) -> None:
        self.finished += 1
        self.finished_s += self.now() - self.part_started

    def left_s(self, done: float = 0, total: float = 0) -> float | None:
        """Seconds left of the step while a part is `done` of `total` units along."""
        now = self.now()
        if done > 0 and self.first is None:
            self.first = (now, done)
        current = None
        if done > 0 and total > 0 and self.first and done > self.first[1]:
            current = time_left(now - self.first[0], done - self.first[1], total - self.first[1])
        elapsed = now - self.part_started
        if self.finished:
            per_part = self.finished_s / self.finished
        elif current is not None:
            per_part = elapsed + current
        else:
            return None
        rest = current if current is not None else max(per_part - elapsed, 0.0)
        return rest + per_part * max(self.parts - self.finished - 1, 0)
