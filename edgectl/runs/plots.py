"""Plots of runs and sweeps (PNG, SVG or PDF by the path's suffix), drawn from run-record events.

Every figure is computed from what the records hold (events, summaries, the metrics of
edgectl.runs.report); nothing is measured here. Figures use matplotlib's object API (`Figure` on
an Agg canvas), never pyplot, so no display and no global state are involved.

Note: the pipeline timeline shows ONE iteration (a mini-batch in the middle of the last
round, past the warm-up of the first): one lane per device and resource in data-flow order
(each device's compute and uplink, the server's compute, each device's downlink), spans
coloured by what they did, except the server's compute: its spans are coloured by the device
each task worked for (the span's "device"), so the legend says whose work the server did
when. Spans of that mini-batch are solid; spans of other mini-batches
that overlap its window (another device's work, the pipeline's next batch) are faint, so a
gap in a lane is real idle time. Each lane is labelled with its busy share of the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from agents.events import RESOURCES
from edgectl.runs.summary import Summary, union_length

STRATEGY_COLORS = {"fl": "tab:blue", "split": "tab:orange", "pipar": "tab:green"}
WHAT_COLORS = {"forward": "tab:blue", "backward": "tab:orange", "step": "tab:olive",
               "train": "tab:purple", "server train": "tab:red", "activation": "tab:green",
               "gradient": "tab:cyan", "weights": "tab:gray", "eval": "tab:brown"}
_SPARE = ("tab:pink", "lime", "darkkhaki", "sienna", "indigo", "crimson")
DEVICE_COLORS = ("navy", "gold", "maroon", "teal", "magenta", "black", "peru", "orchid",
                 "slateblue", "yellowgreen")   # the server's work, per device it served
RESOURCE_LABELS = {"device.compute": "compute", "uplink": "uplink",
                   "server.compute": "compute", "downlink": "downlink"}


def _color(key: str, palette: dict[str, str]) -> str:
    if key not in palette:
        palette[key] = _SPARE[(len(palette) - len(WHAT_COLORS)) % len(_SPARE)]
    return palette[key]


def _save(fig: Figure, path: Path) -> Path:
    """Saved in the format the path's suffix names (png, svg, pdf). A figure drawn again
    from the same record is the same file, byte for byte: no date inside, and SVG ids
    from a fixed salt instead of a random one (a paper's repository sees no change)."""
    FigureCanvasAgg(fig)
    with rc_context({"svg.hashsalt": "edgectl"}):
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata=_NO_DATE.get(path.suffix))
    return path


_NO_DATE = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}


# --- the pipeline timeline of one iteration ---------------------------------------------------

@dataclass(frozen=True)
class Iteration:
    round: int
    batch: int
    start: float
    end: float

    @property
    def length_s(self) -> float:
        return self.end - self.start


def training_spans(events: Sequence[dict]) -> list[dict]:
    return [e for e in events if e.get("type") == "span" and e.get("what") != "eval"]


def pick_iteration(events: Sequence[dict]) -> Iteration | None:
    """The mini-batch in the middle of the last round (see the module's Note)."""
    spans = [s for s in training_spans(events) if s.get("batch", -1) >= 0]
    if not spans:
        return None
    last = max(s["round"] for s in spans)
    batches = sorted({s["batch"] for s in spans if s["round"] == last})
    batch = batches[len(batches) // 2]
    mine = [s for s in spans if s["round"] == last and s["batch"] == batch]
    return Iteration(last, batch, min(s["start"] for s in mine), max(s["end"] for s in mine))


def lanes(events: Sequence[dict]) -> list[tuple[str, str]]:
    """(host, resource) lanes in data-flow order: per device compute and uplink, then the
    server's compute, then per device downlink."""
    spans = [e for e in events if e.get("type") == "span"]
    devices = sorted({s["host"] for s in spans if s["resource"] != "server.compute"},
                     key=_natural)
    servers = sorted({s["host"] for s in spans if s["resource"] == "server.compute"})
    order = [(d, r) for d in devices for r in ("device.compute", "uplink")]
    order += [(s, "server.compute") for s in servers]
    return order + [(d, "downlink") for d in devices]


def _natural(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


def _what_key(span: dict) -> str:
    if span["resource"] == "server.compute" and span.get("device"):
        return f"server for {span['device']}"
    if span["resource"] == "server.compute" and span["what"].startswith("train"):
        return "server train"
    return span["what"]


def device_palette(events: Sequence[dict]) -> dict[str, str]:
    """One colour per device the server worked for: "server for d1" -> colour, devices in
    natural order (d2 before d10), so a device keeps its colour across a run's figures."""
    devices = sorted({s["device"] for s in training_spans(events)
                      if s["resource"] == "server.compute" and s.get("device")}, key=_natural)
    return {f"server for {d}": DEVICE_COLORS[i % len(DEVICE_COLORS)]
            for i, d in enumerate(devices)}


def _draw_timeline(ax, events: Sequence[dict], it: Iteration, palette: dict) -> set[str]:
    order = lanes(events)
    for key, color in device_palette(events).items():
        palette.setdefault(key, color)
    spans = training_spans(events)
    used = set()
    for y, (host, resource) in enumerate(order):
        inside = []
        for s in spans:
            if (s["host"], s["resource"]) != (host, resource):
                continue
            s0, s1 = max(s["start"], it.start), min(s["end"], it.end)
            if s1 <= s0:
                continue
            inside.append((s0, s1))
            mine = s["round"] == it.round and s["batch"] == it.batch
            key = _what_key(s)
            used.add(key)
            ax.broken_barh([((s0 - it.start) * 1e3, (s1 - s0) * 1e3)], (y - 0.38, 0.76),
                           facecolors=_color(key, palette), alpha=1.0 if mine else 0.3,
                           edgecolor="black" if mine else "none", linewidth=0.4)
        busy = union_length(inside) / it.length_s if it.length_s else 0.0
        ax.text(1.005, y, f"busy {busy:.0%}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=7)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{h} {RESOURCE_LABELS[r]}" for h, r in order], fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    return used


def plot_timelines(panels: Sequence[tuple[str, Sequence[dict]]], path: Path,
                   title: str) -> Path | None:
    """timeline_figure saved at `path`; None when no run has an iteration."""
    fig = timeline_figure(panels, title)
    return _save(fig, path) if fig else None


def timeline_figure(panels: Sequence[tuple[str, Sequence[dict]]], title: str) -> Figure | None:
    """One panel per (name, events), each showing its own run's picked iteration, on one
    shared time axis so longer iterations look longer. None when no run has an iteration."""
    picked = [(name, ev, pick_iteration(ev)) for name, ev in panels]
    picked = [p for p in picked if p[2] is not None]
    if not picked:
        return None
    heights = [max(len(lanes(ev)), 1) * 0.32 + 0.9 for _, ev, _ in picked]
    fig = Figure(figsize=(11, sum(heights) + 1.2), layout="constrained")
    axes = fig.subplots(len(picked), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    palette, used = dict(WHAT_COLORS), set()
    for ax, (name, ev, it) in zip(axes, picked, strict=True):
        used |= _draw_timeline(ax, ev, it, palette)
        ax.set_title(f"{name}: round {it.round}, mini-batch {it.batch}, "
                     f"{it.length_s * 1e3:.1f} ms", fontsize=9, loc="left")
    axes[-1].set_xlabel("ms since the iteration's first span")
    handles = [Patch(color=palette[k], label=k) for k in palette if k in used]
    handles.append(Patch(color="lightgray", label="other mini-batches (faint)"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 6),
               fontsize=8, title=title, title_fontsize=11, frameon=False)
    return fig


# --- sweep plots ------------------------------------------------------------------------------

def plot_round_time_vs_bandwidth(points: dict[str, list[tuple[str, float, float, float, float]]],
                                 path: Path, title: str) -> Path:
    """points: strategy -> [(bandwidth label, rate bits/s or inf, median, min, max)]. The
    x axis is categorical by rate, slowest first, with unshaped (inf) at the right."""
    labels = sorted({(rate, label) for pts in points.values() for label, rate, *_ in pts})
    x_of = {label: i for i, (_, label) in enumerate(labels)}
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for strategy, pts in points.items():
        pts = sorted(pts, key=lambda p: x_of[p[0]])
        xs = [x_of[p[0]] for p in pts]
        med = [p[2] for p in pts]
        err = [[p[2] - p[3] for p in pts], [p[4] - p[2] for p in pts]]
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=strategy,
                    color=STRATEGY_COLORS.get(strategy))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([label for _, label in labels])
    ax.set_xlabel("link bandwidth per device (slowest left; unshaped = no tc shaping)")
    ax.set_ylabel("round time, s (median; bars: min-max)")
    top = max((p[4] for pts in points.values() for p in pts), default=1.0)
    ax.set_ylim(0, top * 1.15 or 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_idle_by_resource(idle: dict[str, dict[str, dict[str, float]]], path: Path,
                          title: str) -> Path:
    """idle: bandwidth label -> strategy -> resource -> idle fraction. One panel per
    bandwidth; groups are resources, bars strategies."""
    fig = Figure(figsize=(max(4.5 * len(idle), 6), 4))
    axes = fig.subplots(1, len(idle), sharey=True, squeeze=False)[0]
    for ax, (label, by_strategy) in zip(axes, idle.items(), strict=True):
        width = 0.8 / max(len(by_strategy), 1)
        for i, (strategy, fractions) in enumerate(by_strategy.items()):
            xs = [j + (i - (len(by_strategy) - 1) / 2) * width for j in range(len(RESOURCES))]
            ax.bar(xs, [fractions.get(r, math.nan) for r in RESOURCES], width,
                   label=strategy, color=STRATEGY_COLORS.get(strategy))
        ax.set_xticks(range(len(RESOURCES)))
        ax.set_xticklabels(RESOURCES, fontsize=8, rotation=15)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("idle fraction of training time\n(per-device resources: mean)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_accuracy_vs_time(curves: dict[str, list[tuple[float, float]]], path: Path,
                          title: str, styles: dict[str, tuple[str, str]] | None = None) -> Path:
    return _save(accuracy_figure(curves, title, styles), path)


def accuracy_figure(curves: dict[str, list[tuple[float, float]]], title: str,
                    styles: dict[str, tuple[str, str]] | None = None) -> Figure:
    """curves: line label -> [(seconds since training started, test accuracy as a
    fraction)], one point per round, drawn in %; styles: line label -> (colour, line
    style)."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for label, pts in curves.items():
        color, linestyle = (styles or {}).get(label, (None, "-"))
        ax.plot([t for t, _ in pts], [a * 100 for _, a in pts], marker="o", label=label,
                color=color, linestyle=linestyle)
    ax.set_xlabel("wall time since training started, s (one point per round)")
    ax.set_ylabel("test accuracy, %")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def plot_busy_idle(summary: Summary, events: Sequence[dict], path: Path, title: str) -> Path:
    """Busy and idle seconds of each (host, resource) over the run's training time."""
    by_lane = {(r.host, r.resource): r for r in summary.resources}
    order = [lane for lane in lanes(events) if lane in by_lane] or list(by_lane)
    fig = Figure(figsize=(8, 0.35 * len(order) + 1.4))
    ax = fig.subplots()
    busy = [by_lane[lane].busy_s for lane in order]
    idle = [by_lane[lane].idle_s for lane in order]
    ys = range(len(order))
    ax.barh(ys, busy, color="tab:green", label="busy")
    ax.barh(ys, idle, left=busy, color="lightgray", label="idle")
    for y, lane in zip(ys, order, strict=True):
        ax.text(1.005, y, f"{by_lane[lane].utilization:.0%}", va="center", fontsize=7,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{h} {RESOURCE_LABELS.get(r, r)}" for h, r in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds of training time ({summary.train_s:.2f} s in all)")
    ax.legend(fontsize=8, ncol=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title, fontsize=10, loc="left")
    return _save(fig, path)


def plot_rounds(events: Sequence[dict], path: Path, title: str) -> Path | None:
    """Each round's training time, numbered from 1, with what happened between rounds: a
    bandwidth change (dashed line, new rates) and an adaptive run's re-plan (its new
    placement where it changed; a cross where it predicted the round). None without
    rounds."""
    rounds = sorted((e for e in events if e.get("type") == "round"), key=lambda e: e["round"])
    if not rounds:
        return None
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    xs = [e["round"] for e in rounds]
    ax.bar(xs, [e["train_s"] for e in rounds], color="tab:green", alpha=0.8,
           label="training time")
    starts = [e["start"] for e in rounds]
    for change in (e for e in events if e.get("type") == "bandwidth"):
        before = sum(1 for s in starts if s < change["time"])   # rounds started before it
        ax.axvline(before + 0.5, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(f"up {change['up'] or '-'}, down {change['down'] or '-'}",
                    (before + 0.5, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    ha="right", va="top", fontsize=7, color="tab:red")
    replans = [e for e in events if e.get("type") == "replan" and "predicted_new_round_s" in e]
    if replans:
        ax.plot([e["round"] for e in replans], [e["predicted_new_round_s"] for e in replans],
                "kx", label="predicted by the re-plan")
    for e in replans:
        if e.get("changed"):
            placed = ", ".join(f"p={p} N={n}" for p, n in sorted(set(map(tuple,
                                                                       e["new"].values()))))
            ax.annotate(f"re-plan: {placed}", (e["round"], e["predicted_new_round_s"]),
                        textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax.set_ylim(0, 1.15 * max([e["train_s"] for e in rounds]
                              + [e["predicted_new_round_s"] for e in replans]))
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("training time, s")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
