"""A run beside its baselines: the same work trained again as fl and split, measured now.

`edgectl train --strategy pipar --compare fl,split` answers the question a plan only
predicts: is the chosen placement faster here? Each baseline trains with the same options
and seed right after the main run, under the same shaping; split keeps each device at the
split point the plan chose (one micro-batch), so the difference is the pipelining; fl
trains the whole model on every device. Rows are computed from the runs' summaries.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from edgectl.errors import UsageError
from edgectl.runs.options import TrainOptions
from edgectl.runs.summary import Summary

BASELINES = ("fl", "split", "pipar")
DECENTRAL_BASELINES = ("plexus", "dpsgd")   # a decentralized run compares with these


@dataclass(frozen=True)
class ComparedRun:
    strategy: str
    placement: str             # per device, in words
    iteration_s: float         # measured, median over rounds of training time / batches
    predicted_iteration_s: float | None
    round_s: float             # median training time of a round
    server_idle_s: float       # over the training time: server compute not busy
    accuracy: float | None     # after the last round
    run_dir: str
    summary: Summary


def parse_baselines(text: str | None, strategy: str) -> tuple[str, ...]:
    """--compare's strategies, checked: known, and not the run's own."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    family = DECENTRAL_BASELINES if strategy in DECENTRAL_BASELINES else BASELINES
    for name in names:
        if name not in family or name == strategy:
            allowed = [b for b in family if b != strategy]
            raise UsageError(f"--compare {name!r}: choose among {', '.join(allowed)} "
                             f"(comma-separated), strategies other than --strategy {strategy}")
    return names


def baseline_options(options: TrainOptions, strategy: str) -> TrainOptions:
    """The run's options for a baseline: the same work, the baseline's placement rules."""
    return dataclasses.replace(
        options, strategy=strategy, microbatches=None, min_split_point=None,
        max_microbatches=None, adapt=False, calibrate=False,
        split_point=None if strategy in ("fl", *DECENTRAL_BASELINES) else options.split_point,
        sample_size=options.sample_size if strategy == "plexus" else None,
        topology=options.topology if strategy == "dpsgd" else None,
        churn=options.churn if strategy in DECENTRAL_BASELINES else None,
        **dict.fromkeys(TrainOptions.ECOFED_OPTIONS))


def compared_run(strategy: str, placements: dict, summary: Summary,
                 run_dir: str) -> ComparedRun:
    per_round = [r.train_s for r in summary.rounds] or [summary.train_s]
    batches = max(summary.batches_per_round, 1)
    busy = summary.server_busy_s()
    return ComparedRun(
        strategy, _placement_words(placements), statistics.median(per_round) / batches,
        summary.predicted_iteration_s, statistics.median(per_round),
        max(summary.train_s - busy, 0.0),
        summary.rounds[-1].accuracy if summary.rounds else None, run_dir, summary)


def _placement_words(placements: dict) -> str:
    texts = [("fl" if d["mode"] == "fl" else f"p={d['split_point']} N={d['microbatches']}")
             for d in placements["devices"]]
    return texts[0] if len(set(texts)) == 1 else ", ".join(texts)
