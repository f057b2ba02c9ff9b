"""Plexus against D-PSGD from run records: time to a target accuracy, bytes moved, and
device-seconds of training, one row per run.

    python3 bench/plexus_table.py bench-out/plexus --target 0.70
    python3 bench/plexus_table.py runs/RUN_A runs/RUN_B --target 0.70

Reads rounds.jsonl and run.json of every plexus or dpsgd run under the given folders
(bench output folders or run records). Time to target: the sum of round wall times
(start to end, evaluation included) up to the first round whose accuracy reaches the
target. Bytes: models sent node to node (peer_bytes), models fetched by nodes that joined
or fell behind (fetches), and every byte on the nodes' connections to the server
(membership views, the evaluated model, heartbeats), over the whole run. Device-seconds:
the nodes' local training time summed over nodes and rounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += [p] if (p / "run.json").is_file() else \
            sorted(d.parent for d in p.rglob("run.json"))
    return found


def row(run: Path, target: float) -> dict | None:
    info = json.loads((run / "run.json").read_text())
    strategy = info.get("config", {}).get("strategy")
    if strategy not in ("plexus", "dpsgd"):
        return None
    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x]
    elapsed, reached = 0.0, None
    for r in rounds:
        elapsed += r["end"] - r["start"]
        if reached is None and (r["accuracy"] or 0) >= target:
            reached = (r["round"], elapsed)
    d = [r["decentral"] for r in rounds]
    peer = sum(n for x in d for to in x["peer_bytes"].values() for n in to.values())
    fetch = sum(f["bytes"] for x in d for f in x["fetches"].values())
    server = sum(sum(r["bytes_up"].values()) + sum(r["bytes_down"].values()) for r in rounds)
    last = next((r for r in reversed(rounds) if r["accuracy"] is not None), None)
    return {"run": run.name, "strategy": strategy, "rounds": len(rounds),
            "to_target": reached, "total_s": elapsed,
            "peer_mb": peer / 1e6, "fetch_mb": fetch / 1e6, "server_mb": server / 1e6,
            "device_s": sum(x["device_train_s"] for x in d),
            "accuracy": last["accuracy"] if last else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--target", type=float, default=0.70, help="accuracy, 0-1")
    args = parser.parse_args()
    rows = [r for r in (row(d, args.target) for d in run_dirs(args.paths)) if r]
    print(f"| run | strategy | rounds | s to {args.target:.0%} (round) | run s | "
          "MB node to node | MB fetched | MB to/from server | device-s training | "
          "final accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        reached = f"{r['to_target'][1]:.1f} ({r['to_target'][0]})" if r["to_target"] \
            else "not reached"
        acc = f"{r['accuracy']:.1%}" if r["accuracy"] is not None else "-"
        print(f"| {r['run']} | {r['strategy']} | {r['rounds']} | {reached} | "
              f"{r['total_s']:.1f} | {r['peer_mb']:.1f} | {r['fetch_mb']:.1f} | "
              f"{r['server_mb']:.1f} | {r['device_s']:.1f} | {acc} |")


if __name__ == "__main__":
    main()
