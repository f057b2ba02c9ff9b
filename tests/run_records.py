"""Synthetic run records with known figures, written as `edgectl train` writes them.

`write_run` makes runs/<run-id>/ with run.json, events.jsonl, rounds.jsonl and
summary.json (computed by the real summarize()) from hand-made spans: two devices whose
iterations each take 100 ms (device forward 0-20 ms, uplink 20-30, server 30-60, downlink
60-70, device backward 70-100, the second device a few ms later), so tests can check
values without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgectl.runs.summary import summarize

DEVICES = ("d1", "d2")
UP_BYTES, DOWN_BYTES = 1000, 400


def _span(host, resource, what, r, b, start, end, nbytes=0, device=None):
    span = {"type": "span", "host": host, "resource": resource, "what": what, "round": r,
            "batch": b, "mb": 0, "start": start, "end": end, "bytes": nbytes}
    return span | ({"device": device} if device else {})


def make_events(accuracies=(0.5, 0.75), batches=3, t0=1000.0) -> list[dict]:
    events = []
    for r, accuracy in enumerate(accuracies):
        start = t0 + r * 10.0
        for b in range(batches):
            for i, d in enumerate(DEVICES):
                t = start + b * 0.1 + i * 0.005
                events += [
                    _span(d, "device.compute", "forward", r, b, t, t + 0.02),
                    _span(d, "uplink", "activation", r, b, t + 0.02, t + 0.03, UP_BYTES),
                    _span("server", "server.compute", f"train {d}", r, b, t + 0.03, t + 0.06,
                          device=d),
                    _span(d, "downlink", "gradient", r, b, t + 0.06, t + 0.07, DOWN_BYTES),
                    _span(d, "device.compute", "backward", r, b, t + 0.07, t + 0.1)]
                events.append({"type": "progress", "host": d, "round": r, "batch": b,
                               "batches": batches})
        train_s = batches * 0.1
        events.append({"type": "round", "host": "server", "round": r, "loss": 1.0 / (r + 1),
                       "test_loss": None if accuracy is None else 1.2 / (r + 1),
                       "accuracy": accuracy, "samples": 64 * batches, "train_s": train_s,
                       "eval_s": 0.5, "start": start, "end": start + train_s + 0.5})
    return events


def write_run(runs_dir: Path, run_id: str = "20240501-120000-pipar-ab12", *,
              strategy: str = "pipar", model: str = "vgg5", status: str = "completed",
              accuracies=(0.5, 0.75), rounds_planned: int | None = None,
              shaping: list[dict] | None = None, lr: float = 0.01,
              started: float = 1714564800.0, summary: bool = True) -> Path:
    path = Path(runs_dir) / run_id
    path.mkdir(parents=True)
    events = make_events(accuracies)
    devices = [{"name": d, "split_point": 2, "microbatches": 4} for d in DEVICES]
    info = {"run_id": run_id, "status": status, "started": started, "ended": started + 30,
            "command": f"edgectl train --strategy {strategy}",
            "config": {"run_id": run_id, "strategy": strategy, "model": model,
                       "dataset": "fashion-mnist", "devices": devices,
                       "rounds": rounds_planned or len(accuracies), "batch_size": 32,
                       "lr": lr, "max_batches": 3, "paced": False},
            "hosts": [{"name": "server", "role": "server"},
                      *({"name": d, "role": "device"} for d in DEVICES)],
            "placements": {"devices": [{"device": d, "split_point": 2, "microbatches": 4,
                                        "mode": "pipar"} for d in DEVICES],
                           "num_blocks": 5, "raw_upload_devices": []},
            "train_options": {"adapt": False}, "shaping": shaping, "plan": None}
    (path / "run.json").write_text(json.dumps(info, indent=2))
    lines = [json.dumps(e) + "\n" for e in events]
    (path / "events.jsonl").write_text("".join(lines))
    (path / "rounds.jsonl").write_text("".join(
        line for line, e in zip(lines, events, strict=True) if e["type"] == "round"))
    if summary:
        (path / "summary.json").write_text(json.dumps(summarize(events).to_json()))
    return path
