"""What a figure is saved as and what it is called, without importing matplotlib.

`check_figure_format` validates `--figure-format` (png, svg or pdf) so a typo is refused
before anything runs; `figure_name` gives a figure's file name in that format; `run_title`
says what a run was (strategy, model, dataset and its link setting) from its run.json and
events, for figure titles: a reader of a figure wants that, not a run id.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgectl.errors import UsageError

FIGURE_FORMATS = ("png", "svg", "pdf")


def check_figure_format(fmt: str) -> str:
    if fmt not in FIGURE_FORMATS:
        raise UsageError(f"--figure-format {fmt!r} is unknown; choose "
                         f"{', '.join(FIGURE_FORMATS[:-1])} or {FIGURE_FORMATS[-1]}")
    return fmt


def figure_name(stem: str, fmt: str) -> str:
    return f"{stem}.{check_figure_format(fmt)}"


def run_title(info: dict, events: Sequence[dict] = ()) -> str:
    """"pipar vgg5 on fashion-mnist, links up 10mbit, down 25mbit, 1 bandwidth change"."""
    config = info.get("config") or {}
    what = " ".join(str(config.get(k, "?")) for k in ("strategy", "model"))
    dataset = f" on {config['dataset']}" if config.get("dataset") else ""
    changes = sum(1 for e in events if e.get("type") == "bandwidth")
    scheduled = f", {changes} bandwidth change{'s' if changes != 1 else ''}" if changes else ""
    return f"{what}{dataset}, {link_text(info)}{scheduled}"


def link_text(info: dict) -> str:
    """The run's link setting: a bench's bandwidth, the shaping `train --shape` applied, or
    unshaped (with the rates a plan measured, when it has them)."""
    bench = info.get("bench") or {}
    if bench.get("bandwidth") and bench["bandwidth"] != "unshaped":
        return f"links {bench['bandwidth']}"
    shaped = {_rates(s.get("up"), s.get("down")) for s in info.get("shaping") or []}
    if len(shaped) == 1:
        return f"links {shaped.pop()}"
    if shaped:
        return "links shaped per device"
    return "unshaped links" + _planned_rates(info.get("plan") or {})


def _rates(up: str | None, down: str | None) -> str:
    if up and up == down:
        return up
    return ", ".join(f"{k} {v}" for k, v in (("up", up), ("down", down)) if v) or "unshaped"


def _planned_rates(plan: dict) -> str:
    devices = [d for d in plan.get("devices") or [] if d.get("uplink_bps")]
    if not devices:
        return ""
    up = min(d["uplink_bps"] for d in devices) / 1e6
    down = min(d.get("downlink_bps") or 0 for d in devices) / 1e6
    return f" (measured up {up:.3g}, down {down:.3g} Mbit/s)"
