"""Reports of one run: the figures a run record gives, its report.md and plots.

`run_metrics` turns one run record into the figures a sweep compares (computed from its
events and summary, never measured again; edgectl/runs/sweep_report.py compares them);
`render_run_report` writes report.md and plots into the record, titled with what the run
was (edgectl/runs/figures.py).

Note: definitions. A round's time is its training time (`train_s` of the round event:
weights down, every mini-batch, weights up; evaluation excluded, since it is the same for
every strategy). Its iteration time is that over the round's mini-batches per device. The
speedup over a baseline is the baseline's median round time (all rounds of all its repeats,
same setting, model and bandwidth) over this run's median round time; across repeats
(edgectl/runs/sweep_summary.py) it is the baseline's median training time over this
strategy's. A server's idle time is the training time minus its compute's busy time;
idle fractions are 1 minus the utilization summarize() computed over the training time. A
resource a strategy never uses (the server's compute under fl) is idle throughout.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.events import RESOURCES
from edgectl.errors import ConfigError
from edgectl.runs.figures import check_figure_format, figure_name, run_title
from edgectl.runs.pacing import pacing_line
from edgectl.runs.records import read_events
from edgectl.runs.summary import Summary, summarize


@dataclass(frozen=True)
class RunMetrics:
    """What one run record says about its speed, idleness, traffic and accuracy."""

    strategy: str
    model: str
    rounds: int
    batches_per_round: int
    iteration_s: tuple[float, ...]     # per round
    round_s: tuple[float, ...]         # per round (training time, see the Note)
    idle: dict[str, float]             # resource -> idle fraction (mean over its hosts)
    bytes_up_per_round: float
    bytes_down_per_round: float
    final_accuracy: float | None
    accuracy_curve: tuple[tuple[float, float], ...]  # (s since training started, accuracy)
    train_s: float = 0.0               # training time over all rounds (see the Note)
    server_busy_s: float = 0.0         # the server's compute busy within the training time
    plan: str = ""                     # the placements it ran (placement_text)
    epsilon: float | None = None       # --dp: the accountant's epsilon after the last round

    @property
    def server_idle_s(self) -> float:
        return max(self.train_s - self.server_busy_s, 0.0)


def placement_text(placements: dict | None, rounds: Sequence[dict] = ()) -> str:
    """Per device p and N ("fl" for a device that trains the whole model), written once
    when every device has the same: "p=2 N=4", or "d1 p=1 N=2, d2 p=3 N=4"; then each
    change the round events show (an adaptive run): "p=1 N=8; round 3: p=3 N=4"."""
    devices = (placements or {}).get("devices") or []
    blocks = (placements or {}).get("num_blocks")
    text = _placed_text([(d["device"], d["split_point"], d["microbatches"]) for d in devices],
                        blocks)
    changes, last = [], text
    for r in rounds:
        placed = r.get("placements")
        now = _placed_text([(k, *v) for k, v in placed.items()], blocks) if placed else last
        if now != last:
            changes.append(f"round {r['round']}: {now}")
        last = now
    return "; ".join([text, *changes]) if text else ""


def _placed_text(placed: list[tuple[str, int, int]], blocks: int | None) -> str:
    placed = sorted(placed)   # by device: a round event lists them in its own order
    texts = ["fl" if p == blocks else f"p={p} N={n}" for _, p, n in placed]
    if len(set(texts)) <= 1:
        return texts[0] if texts else ""
    return ", ".join(f"{name} {t}" for (name, _, _), t in zip(placed, texts, strict=True))


def read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """run.json and the events of the run record at `run_dir`; ConfigError if it is none."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder; pass a run record folder such as "
                          "runs/<run-id> (written by edgectl train or edgectl bench)")
    if not (path / "run.json").is_file() or not (path / "events.jsonl").is_file():
        raise ConfigError(f"{path}: not a run record (needs run.json and events.jsonl); pass "
                          "a folder such as runs/<run-id>")
    try:
        return json.loads((path / "run.json").read_text()), read_events(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable run record: {exc}") from None


def load_summary(run_dir: str | Path, events: list[dict]) -> Summary:
    """summary.json as written at the end of the run, or recomputed from the events when
    it is missing or from another version."""
    try:
        return Summary.from_json(json.loads((Path(run_dir) / "summary.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return summarize(events)


def run_metrics(info: dict, events: list[dict], summary: Summary) -> RunMetrics:
    config = info.get("config") or {}
    devices = [d["name"] for d in config.get("devices", [])]
    servers = [h["name"] for h in info.get("hosts", []) if h.get("role") == "server"]
    rounds = sorted((e for e in events if e.get("type") == "round"), key=lambda e: e["round"])
    batches: dict[int, int] = defaultdict(int)
    for e in events:
        if e.get("type") == "progress":
            batches[e["round"]] = max(batches[e["round"]], e["batches"])
    t0 = rounds[0]["start"] if rounds else 0.0
    n = max(len(rounds), 1)
    return RunMetrics(
        strategy=config.get("strategy", "?"), model=config.get("model", "?"),
        rounds=len(rounds), batches_per_round=summary.batches_per_round,
        iteration_s=tuple(r["train_s"] / batches[r["round"]] for r in rounds
                          if batches[r["round"]]),
        round_s=tuple(r["train_s"] for r in rounds),
        idle=idle_fractions(summary, devices, servers),
        bytes_up_per_round=sum(summary.bytes_up.values()) / n,
        bytes_down_per_round=sum(summary.bytes_down.values()) / n,
        final_accuracy=rounds[-1]["accuracy"] if rounds else None,
        accuracy_curve=tuple((r["end"] - t0, r["accuracy"]) for r in rounds
                             if r["accuracy"] is not None),
        train_s=summary.train_s, server_busy_s=summary.server_busy_s(),
        plan=placement_text(info.get("placements"), rounds), epsilon=summary.epsilon)


def idle_fractions(summary: Summary, devices: Sequence[str],
                   servers: Sequence[str]) -> dict[str, float]:
    """Per resource, the idle fraction averaged over the hosts that own it."""
    util = {(r.host, r.resource): r.utilization for r in summary.resources}
    out = {}
    for resource in RESOURCES:
        hosts = servers if resource == "server.compute" else devices
        hosts = hosts or sorted({h for h, r in util if r == resource})
        if hosts:
            out[resource] = statistics.fmean(1.0 - util.get((h, resource), 0.0) for h in hosts)
    return out


def metrics_of(run_dir: str | Path) -> tuple[RunMetrics, list[dict]]:
    info, events = read_run(run_dir)
    return run_metrics(info, events, load_summary(run_dir, events)), events


def render_run_report(run_dir: str | Path, figure_format: str = "png") -> list[Path]:
    """report.md and plots (in `figure_format`: png, svg or pdf) in one run record; the
    files written."""
    check_figure_format(figure_format)
    path = Path(run_dir)
    info, events = read_run(path)
    summary = load_summary(path, events)
    from edgectl.runs import plots  # matplotlib: only for a record that reads well
    metrics = run_metrics(info, events, summary)
    name = f"{metrics.strategy} {metrics.model}"
    title = run_title(info, events)

    def at(stem: str) -> Path:
        return path / figure_name(stem, figure_format)

    made = [plots.plot_timelines([(name, events)], at("timeline"), f"{title}: one iteration"),
            plots.plot_accuracy_vs_time({name: list(metrics.accuracy_curve)},
                                        at("accuracy_vs_time"), f"{title}: test accuracy"),
            plots.plot_busy_idle(summary, events, at("busy_idle"),
                                 f"{title}: busy and idle time per resource"),
            plots.plot_rounds(events, at("rounds"), f"{title}: training time per round, "
                              "bandwidth changes and re-plans")]
    made = [p for p in made if p is not None]
    (path / "report.md").write_text(run_markdown(info, summary, metrics, made))
    return [path / "report.md", *made]


_CAPTIONS = {   # by file stem, whatever the figure format
    "timeline": "one iteration, span by span, per device and resource (the server's work "
                "coloured by the device it served): gaps are idle time",
    "accuracy_vs_time": "test accuracy (%) after each round against wall time",
    "busy_idle": "busy and idle seconds of each resource over the training time",
    "rounds": "training time per round; dashed: a bandwidth change, with the new rates; "
              "crosses: what an adaptive run's re-plan predicted, labelled where it "
              "changed the placement",
}


def format_or_dash(value: float | None, fmt: str) -> str:
    """A figure a round may lack (not evaluated, --eval-every) as text: "-" when absent."""
    return "-" if value is None else format(value, fmt)


def _predicted(summary: Summary) -> str:
    if summary.prediction_error is None:
        return ""
    return (f" (the plan predicted {summary.predicted_iteration_s * 1e3:.1f} ms, "
            f"{summary.prediction_error:+.1%})")


def _devices_text(info: dict, config: dict) -> str:
    """Per device its placement and, where the record has it, what that ran as (fl, a
    sequential split, pipar) and whether raw samples left the devices."""
    placements = info.get("placements")
    if not placements:
        return ", ".join(f"{d['name']} (p={d.get('split_point')}, N={d.get('microbatches')})"
                         for d in config.get("devices", []))
    text = ", ".join(f"{d['device']} (p={d['split_point']}, N={d['microbatches']}: "
                     f"{d['mode']})" for d in placements["devices"])
    raw = placements.get("raw_upload_devices") or []
    return text + (f"; raw samples of {', '.join(raw)} went to the server (opted in with "
                   "--allow-raw-upload)" if raw else "; raw samples stayed on the devices")


def membership_text(e: dict) -> str:
    """One device_lost, device_joined, agent_restart, churn or resumed event, as a sentence: for
    report.md and the live view alike."""
    kind = e["type"]
    if kind == "device_lost":
        return (f"round {e['round']}: {e['device']} lost ({e['reason']})"
                + ("; its partial round was discarded" if e.get("round_discarded") else ""))
    if kind == "device_joined":
        away = f" after {e['away_s']:.1f} s away" if e.get("away_s") is not None else ""
        return f"round {e['round']}: {e['device']} back{away}"
    if kind == "churn":
        return (f"{e['device']} {'leaves' if e['action'] == 'leave' else 'joins'} "
                "(availability trace)")
    if kind == "agent_restart":
        if e.get("gave_up"):
            return f"{e['device']}: gave up restarting its agent ({e['reason']})"
        return (f"{e['device']}: agent restart, attempt {e['attempt']}, after "
                f"{e['delay_s']:g} s ({e['reason']})")
    return (f"resumed from the checkpoint of round {e['checkpoint_round']}, training from "
            f"round {e['from_round']}")


def run_markdown(info: dict, summary: Summary, metrics: RunMetrics,
                 made: Sequence[Path]) -> str:
    config = info.get("config") or {}
    lines = [f"# Run {info.get('run_id', '?')}", "",
             f"- command: `{info.get('command', '?')}`",
             f"- strategy {metrics.strategy}, model {metrics.model}, dataset "
             f"{config.get('dataset', '?')}, batch size {config.get('batch_size', '?')}",
             f"- status: {info.get('status', '?')}" + (f" ({info['error']})"
                                                       if info.get("error") else ""),
             "- devices: " + _devices_text(info, config)]
    if (info.get("placements") or {}).get("link_pacing"):
        lines.append(f"- {pacing_line(info['placements']['link_pacing'])}")
    if info.get("bench"):
        b = info["bench"]
        setting = f"setting {b['setting']}, " if b.get("setting") else ""
        lines.append(f"- bench {b.get('name')}: {setting}bandwidth {b.get('bandwidth')}, "
                     f"repeat {b.get('repeat')}")
        if b.get("not_applied"):
            lines.append(f"- not applied to {metrics.strategy}: {', '.join(b['not_applied'])}")
    lines += ["", f"Training time {summary.train_s:.2f} s, iteration "
              f"{summary.iteration_s * 1e3:.1f} ms{_predicted(summary)}, pipeline efficiency "
              f"{summary.pipeline_efficiency:.2f}, bottleneck {summary.bottleneck or '-'}.", "",
              "| round | train s | eval s | loss | test loss | accuracy | samples |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.round} | {r.train_s:.2f} | {r.eval_s:.2f} | "
              f"{format_or_dash(r.loss, '.4f')} | "
              f"{format_or_dash(r.test_loss, '.4f')} | {format_or_dash(r.accuracy, '.2%')} | "
              f"{r.samples} |"
              for r in summary.rounds]
    lines += ["", "| host | resource | busy s | idle s | utilization | MB |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.host} | {r.resource} | {r.busy_s:.2f} | {r.idle_s:.2f} | "
              f"{r.utilization:.0%} | {r.bytes / 1e6:.2f} |" for r in summary.resources]
    if summary.membership:
        lines += ["", "## Devices lost and back", ""]
        lines += [f"- {membership_text(e)}" for e in summary.membership]
    lines += ["", "## Plots", ""]
    lines += [f"- `{p.name}`: {_CAPTIONS.get(p.stem, '')}" for p in made]
    return "\n".join(lines) + "\n"
