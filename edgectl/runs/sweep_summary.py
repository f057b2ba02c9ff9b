"""A sweep's repeats aggregated, and the comparison the PiPar paper reports, per condition.

A condition is one (setting, model, bandwidth) of the sweep; its runs are the strategies
x repeats measured in it. `aggregate` takes the per-run rows of edgectl/runs/sweep_report.py
(`bench_rows`) and gives per condition and strategy the median and the spread (min-max
over repeats, and n, the completed repeats) of each run's median iteration and round
time, its training time and the server's idle time (training time minus the server
compute's busy time), and the median final accuracy (and epsilon, under --dp).
`summary_rows` is summary.csv;
`aggregate_markdown` and `paper_markdown` are report.md's tables: the paper's
quantities per model, with the speedup of pipar over fl and split (a baseline's median
training time over pipar's: below 1, pipar was slower, and the table says so), the
server's idle time of each and its factor over pipar's (idle_fl / idle_pipar), the final
accuracy, and the plan pipar ran. Definitions: edgectl/runs/report.py's Note.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

_FIGURES = ("iteration_s", "round_s", "train_s", "server_idle_s")
_SPREAD_COLUMNS = tuple(f"{f}_{k}" for f in _FIGURES for k in ("median", "min", "max"))
SUMMARY_COLUMNS = ("model", "bandwidth", "strategy", "runs", "n", *_SPREAD_COLUMNS,
                   "final_accuracy_median", "epsilon_median", "speedup_over_fl",
                   "speedup_over_split", "plan")
_ROW_FIGURE = {"iteration_s": "iteration_s_median", "round_s": "round_s_median",
               "train_s": "train_s", "server_idle_s": "server_idle_s"}


@dataclass(frozen=True)
class Spread:
    """Values over repeats: their median, least and greatest, and how many there were."""

    median: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        found = [v for v in values if v is not None]
        if not found:
            return cls()
        return cls(statistics.median(found), min(found), max(found), len(found))


@dataclass(frozen=True)
class Aggregate:
    """The repeats of one strategy in one condition."""

    setting: str
    model: str
    bandwidth: str
    strategy: str
    values: dict           # the setting's axis values (from its first row)
    runs: int              # repeats run, completed or not
    figures: dict          # _FIGURES name -> Spread over the completed repeats
    final_accuracy: Spread
    plans: tuple[str, ...]  # the distinct placements its repeats ran
    epsilon: Spread = Spread()   # --dp runs: the accountant's final epsilon

    @property
    def condition(self) -> tuple[str, str, str]:
        return (self.setting, self.model, self.bandwidth)

    @property
    def n(self) -> int:
        return self.figures["train_s"].n

    def median(self, figure: str) -> float | None:
        return self.figures[figure].median


def aggregate(rows: Sequence[dict]) -> list[Aggregate]:
    """One Aggregate per (setting, model, bandwidth, strategy), in the rows' order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (row.get("setting") or "", row["model"], row["bandwidth"], row["strategy"])
        groups[key].append(row)
    out = []
    for (setting, model, bandwidth, strategy), group in groups.items():
        done = [r for r in group if r.get("status") == "completed"]
        out.append(Aggregate(
            setting, model, bandwidth, strategy, dict(group[0].get("values") or {}),
            len(group), {f: Spread.of([r.get(_ROW_FIGURE[f]) for r in done]) for f in _FIGURES},
            Spread.of([r.get("final_accuracy") for r in done]),
            tuple(dict.fromkeys(r["plan"] for r in done if r.get("plan"))),
            Spread.of([r.get("epsilon") for r in done])))
    return out


def _by_condition(aggs: Sequence[Aggregate]) -> dict[tuple, dict[str, Aggregate]]:
    out: dict[tuple, dict[str, Aggregate]] = defaultdict(dict)
    for a in aggs:
        out[a.condition][a.strategy] = a
    return out


def ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def speedups(aggs: Sequence[Aggregate]) -> dict[tuple, dict[str, float | None]]:
    """Per (condition, strategy): the speedup over fl and over split (median training
    times: the baseline's over this strategy's)."""
    out = {}
    for condition, strategies in _by_condition(aggs).items():
        for name, a in strategies.items():
            out[(condition, name)] = {
                base: ratio(strategies[base].median("train_s"), a.median("train_s"))
                if base in strategies else None for base in ("fl", "split")}
    return out


def summary_columns(axes: Sequence[str]) -> tuple[str, ...]:
    return ("setting", *axes, *SUMMARY_COLUMNS)


def summary_rows(aggs: Sequence[Aggregate]) -> list[dict]:
    """summary.csv: one row per Aggregate (summary_columns)."""
    factors = speedups(aggs)
    rows = []
    for a in aggs:
        row = {"setting": a.setting, **a.values, "model": a.model, "bandwidth": a.bandwidth,
               "strategy": a.strategy, "runs": a.runs, "n": a.n,
               "final_accuracy_median": a.final_accuracy.median,
               "epsilon_median": a.epsilon.median, "plan": "; ".join(a.plans)}
        for figure, s in a.figures.items():
            row.update({f"{figure}_median": s.median, f"{figure}_min": s.low,
                        f"{figure}_max": s.high})
        speed = factors[(a.condition, a.strategy)]
        row.update({f"speedup_over_{b}": speed[b] for b in ("fl", "split")})
        rows.append(row)
    return rows


# --- report.md tables ---------------------------------------------------------------------

def num_text(value: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    """A figure for a table: value * scale in `fmt` with `suffix`, "-" when there is none."""
    return "-" if value is None else f"{value * scale:{fmt}}{suffix}"


def _spread(s: Spread, fmt: str, scale: float = 1.0) -> str:
    if s.median is None:
        return "-"
    mid = f"{s.median * scale:{fmt}}"
    return mid if s.n < 2 else f"{mid} ({s.low * scale:{fmt}}-{s.high * scale:{fmt}})"


def speedup_text(factor: float | None) -> str:
    """A speedup in words: "2.31x faster", or below 1 "0.80x slower"."""
    if factor is None:
        return "-"
    return f"{factor:.2f}x {'faster' if factor >= 1 else 'slower'}"


def _models(aggs: Sequence[Aggregate]) -> list[str]:
    return list(dict.fromkeys(a.model for a in aggs))


def aggregate_markdown(aggs: Sequence[Aggregate]) -> list[str]:
    """Per model, one row per condition and strategy: medians (min-max over repeats)."""
    factors = speedups(aggs)
    named = any(a.setting for a in aggs)
    lines = []
    for model in _models(aggs):
        lines += ["", f"### {model}", "",
                  ("| setting " if named else "") + "| bandwidth | strategy | n | iteration ms "
                  "| round s | training s | server idle s | accuracy | vs fl | vs split | plan |",
                  ("| --- " if named else "") + "| --- | --- | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: | ---: | --- |"]
        for a in (a for a in aggs if a.model == model):
            speed = factors[(a.condition, a.strategy)]
            lines.append(
                (f"| {a.setting} " if named else "") + f"| {a.bandwidth} | {a.strategy} "
                f"| {a.n}/{a.runs} | {_spread(a.figures['iteration_s'], '.1f', 1e3)} "
                f"| {_spread(a.figures['round_s'], '.2f')} "
                f"| {_spread(a.figures['train_s'], '.2f')} "
                f"| {_spread(a.figures['server_idle_s'], '.2f')} "
                f"| {num_text(a.final_accuracy.median, '.1f', 100, '%')} "
                f"| {num_text(speed['fl'], '.2f', suffix='x')} "
                f"| {num_text(speed['split'], '.2f', suffix='x')} | {'; '.join(a.plans) or '-'} |")
    return lines


def paper_markdown(aggs: Sequence[Aggregate]) -> list[str]:
    """Per model, one row per condition pipar ran in: PiPar's quantities (module docstring)."""
    conditions = _by_condition(aggs)
    named = any(a.setting for a in aggs)
    lines = []
    for model in _models(aggs):
        rows = [(c, s) for c, s in conditions.items() if c[1] == model and "pipar" in s]
        if not rows:
            continue
        private = any(a.epsilon.median is not None for _, s in rows for a in s.values())
        lines += ["", f"### {model}", "",
                  ("| setting " if named else "") + "| bandwidth | n pipar/fl/split "
                  "| training s pipar / fl / split | pipar vs fl | pipar vs split "
                  "| server idle s pipar / fl / split | idle fl / pipar | idle split / pipar "
                  "| accuracy pipar / fl / split "
                  + ("| epsilon pipar / fl / split " if private else "") + "| pipar plan |",
                  ("| --- " if named else "") + "| --- | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: | ---: " + ("| ---: " if private else "") + "| --- |"]
        for (setting, _, bandwidth), s in rows:
            trio = [s.get(k) for k in ("pipar", "fl", "split")]
            train = [a.median("train_s") if a else None for a in trio]
            idle = [a.median("server_idle_s") if a else None for a in trio]
            accuracy = [a.final_accuracy.median if a else None for a in trio]
            epsilon = [a.epsilon.median if a else None for a in trio]
            lines.append(
                (f"| {setting} " if named else "") + f"| {bandwidth} "
                f"| {'/'.join(str(a.n) if a else '-' for a in trio)} "
                f"| {' / '.join(num_text(t, '.2f') for t in train)} "
                f"| {speedup_text(ratio(train[1], train[0]))} "
                f"| {speedup_text(ratio(train[2], train[0]))} "
                f"| {' / '.join(num_text(t, '.2f') for t in idle)} "
                f"| {num_text(ratio(idle[1], idle[0]), '.2f', suffix='x')} "
                f"| {num_text(ratio(idle[2], idle[0]), '.2f', suffix='x')} "
                f"| {' / '.join(num_text(a, '.1f', 100, '%') for a in accuracy)} "
                + (f"| {' / '.join(num_text(e, '.2f') for e in epsilon)} " if private else "")
                + f"| {'; '.join(trio[0].plans) or '-'} |")
    return lines
