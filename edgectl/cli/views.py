"""Rich renderings of edgectl's results: model facts, live training progress, run summaries.

Pure presentation: each function takes a result dataclass and returns a renderable, so
the CLI stays a thin layer and tests can render without a terminal.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from edgectl.runs.pacing import pacing_line
from edgectl.runs.report import format_or_dash, membership_text
from edgectl.runs.summary import MEMBERSHIP_EVENTS, Summary


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def split_point_table(model: str, input_shape: str, rows: list[dict]) -> Table:
    table = Table(title=f"{model} at input {input_shape}: split points")
    for col in ("p", "after block", "output shape", "act. bytes/sample", "device params",
                "device MFLOPs", "server MFLOPs"):
        table.add_column(col, justify="left" if col in ("after block", "output shape") else "right")
    for r in rows:
        table.add_row(str(r["p"]), r["after_block"], "x".join(map(str, r["output_shape"])),
                      f"{r['activation_bytes']:,}", f"{r['device_params']:,}",
                      f"{r['device_flops'] / 1e6:,.2f}", f"{r['server_flops'] / 1e6:,.2f}")
    return table


def run_header(options, strategy: str, server: str, placements: dict) -> list[str]:
    """What a run is about to do, per device in words: which devices pipeline, which run
    as a sequential split or as fl, and whether raw samples leave any device."""
    lines = [f"training {options.model} on {options.dataset} with {strategy}: "
             f"server {server}"]
    words = {"fl": "fl: the whole model trains on the device",
             "split": "split: one micro-batch, nothing pipelines",
             "ecofed": "ecofed: frozen device blocks, activations up, nothing down",
             "plexus": "plexus: a node of the peer sample, no server part",
             "dpsgd": "dpsgd: a node of the ring, no server part"}
    for d in placements["devices"]:
        mode = d["mode"].split(",")[0]
        where = "" if mode in ("fl", "plexus", "dpsgd") else \
            f"p={d['split_point']} N={d['microbatches']}, "
        lines.append(f"  {d['device']}: {where}{words.get(mode, 'pipelined')}")
    if strategy == "pipar" and all(d["mode"].split(",")[0] != "pipar"
                                           for d in placements["devices"]):
        lines.append("note: no device pipelines in this run (the plan chose fl or a "
                     "sequential split): it is pipar in name only")
    if strategy in ("plexus", "dpsgd"):
        lines.append(_decentral_header(options, strategy, len(placements["devices"])))
    raw = placements["raw_upload_devices"]
    lines.append(f"raw samples of {', '.join(raw)} go to the server (--allow-raw-upload)"
                 if raw else "raw samples stay on the devices")
    if "link_pacing" in placements:
        lines.append(pacing_line(placements["link_pacing"]))
    return lines + _privacy_lines(options.dp_settings(), strategy)


def _decentral_header(options, strategy: str, fleet: int) -> str:
    if strategy == "plexus":
        k = options.sample_size or max(1, (fleet + 1) // 2)
        what = (f"each round {k} of the nodes online, sampled by every node from a hash of "
                "the round and the view, train and average among themselves")
    else:
        what = (f"every node trains each round and averages with its {options.degree()} "
                "ring neighbours")
    churn = f"; availability trace {options.churn}" if options.churn else ""
    return f"{what}; the server only hands out the membership view and evaluates{churn}"


def _privacy_lines(dp, strategy: str) -> list[str]:
    """What --dp protects, said before the run (README: "Differential privacy")."""
    if dp is None:
        return []
    lines = [f"DP-SGD on every part: noise multiplier {dp.noise_multiplier:g}, per-sample "
             f"clipping {dp.max_grad_norm:g}; epsilon for delta {dp.delta:g} each round"]
    if strategy != "fl":
        lines.append("  it bounds what the weights reveal about a sample, not the activations "
                     "and labels devices send the server")
    if dp.noise_seed is not None:
        lines.append("warning: --dp-noise-seed fixes the noise; whoever knows it can remove "
                     "it, so this run has no privacy guarantee")
    return lines


def comparison_table(runs: list) -> Table:
    """The main run and its baselines side by side (edgectl/runs/compare.py), measured."""
    main = runs[0]
    table = Table(title=f"{main.strategy} against {', '.join(r.strategy for r in runs[1:])}, "
                        "the same work (medians over rounds)", box=box.SIMPLE_HEAD,
                  caption=f"speedup: the row's round time over {main.strategy}'s (below 1: "
                          f"{main.strategy} is slower); srv idle: server compute idle, s")
    table.add_column("run")
    table.add_column("placement", min_width=11)
    for col in ("iter ms", "pred ms", "round s", "srv idle", "acc", "speedup"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(r.strategy, r.placement, f"{r.iteration_s * 1e3:.1f}",
                      "-" if r.predicted_iteration_s is None
                      else f"{r.predicted_iteration_s * 1e3:.1f}",
                      f"{r.round_s:.2f}", f"{r.server_idle_s:.2f}",
                      "-" if r.accuracy is None else f"{r.accuracy:.1%}",
                      "" if r is main else f"{r.round_s / main.round_s:.2f}x")
    return table


def summary_tables(summary: Summary) -> Group:
    private = summary.epsilon is not None
    rounds = Table(title="rounds" + (f" (epsilon for delta {summary.delta:g})" if private
                                     else ""))
    for col in ("round", "train s", "eval s", "train loss", "test loss", "accuracy", "samples",
                *(["epsilon"] if private else [])):
        rounds.add_column(col, justify="right")
    for r in summary.rounds:
        rounds.add_row(str(r.round), f"{r.train_s:.2f}", f"{r.eval_s:.2f}",
                       format_or_dash(r.loss, ".4f"),
                       format_or_dash(r.test_loss, ".4f"), format_or_dash(r.accuracy, ".2%"),
                       str(r.samples), *([format_or_dash(r.epsilon, ".2f")] if private else []))
    predicted = (f" (predicted {summary.predicted_iteration_s * 1e3:.1f} ms, "
                 f"{summary.prediction_error:+.0%})" if summary.prediction_error is not None
                 else "")
    resources = Table(title=f"resources over {summary.train_s:.2f} s of training "
                            f"(iteration {summary.iteration_s * 1000:.1f} ms{predicted}, pipeline "
                            f"efficiency {summary.pipeline_efficiency:.2f}, bottleneck "
                            f"{summary.bottleneck})")
    for col in ("host", "resource", "busy s", "idle s", "utilization", "bytes"):
        resources.add_column(col, justify="left" if col in ("host", "resource") else "right")
    for r in summary.resources:
        resources.add_row(r.host, r.resource, f"{r.busy_s:.2f}", f"{r.idle_s:.2f}",
                          f"{r.utilization:.0%}", _mb(r.bytes) if r.bytes else "")
    return Group(rounds, resources)


class LiveProgress:
    """Live per-device progress and per-round results, fed one event at a time."""

    def __init__(self, console: Console, devices: list[str], rounds: int):
        self.console, self.rounds = console, rounds
        self.devices = {d: (0, 0, 0) for d in devices}   # round, batch, batches
        self._live = Live(self._render(), console=console, refresh_per_second=4,
                          transient=True) if console.is_terminal else None

    def __enter__(self) -> LiveProgress:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        if event["type"] == "progress":
            self.devices[event["host"]] = (event["round"], event["batch"], event["batches"])
        elif event["type"] == "round":
            self.console.print(_round_line(event, self.rounds, len(self.devices)))
        elif event["type"] == "replan":
            self.console.print(_replan_line(event))
        elif event["type"] == "bandwidth":
            self.console.print(f"bandwidth: {', '.join(event['devices'])} now "
                               f"up {event['up'] or 'unchanged'}, down "
                               f"{event['down'] or 'unchanged'}")
        elif event["type"] in MEMBERSHIP_EVENTS:
            self.console.print(membership_text(event))
        else:
            return
        if self._live:
            self._live.update(self._render())

    def _render(self) -> Table:
        table = Table(title="training", show_edge=False)
        table.add_column("device")
        table.add_column("round", justify="right")
        table.add_column("batches", justify="right")
        for name, (r, b, n) in self.devices.items():
            table.add_row(name, f"{max(r, 1)}/{self.rounds}", f"{b}/{n}" if n else "starting")
        return table


def _round_line(e: dict, rounds: int, fleet: int) -> str:
    if "decentral" in e:
        return _decentral_line(e, rounds)
    done = e.get("devices", ())
    who = f", averaged over {', '.join(done) or 'no device'} only" \
        if "devices" in e and len(done) < fleet else ""
    return (f"round {e['round']}/{rounds}: {e['end'] - e['start']:.1f} s{who}, "
            f"train loss {format_or_dash(e['loss'], '.4f')}, "
            f"test accuracy {format_or_dash(e['accuracy'], '.2%')}{_privacy_text(e)}")


def _decentral_line(e: dict, rounds: int) -> str:
    """A plexus or dpsgd round: who trained, what they averaged, the bytes between peers."""
    d = e["decentral"]
    peer_mb = sum(sum(to.values()) for to in d["peer_bytes"].values()) / 1e6
    fetched = f", {', '.join(d['fetches'])} fetched the model first" if d["fetches"] else ""
    partial = [n for n, c in d["aggregation"].items()
               if d["strategy"] == "plexus" and sorted(c) != d["sample"]]
    who = (f"sample {', '.join(d['sample'])}" if d["strategy"] == "plexus"
           else f"{len(d['sample'])} nodes")
    short = f" ({', '.join(partial)} averaged part of it)" if partial else ""
    return (f"round {e['round']}/{rounds}: {e['end'] - e['start']:.1f} s, {who}{short}"
            f"{fetched}, {peer_mb:.1f} MB between peers, "
            f"{d['device_train_s']:.1f} device-s of training, "
            f"train loss {format_or_dash(e['loss'], '.4f')}, "
            f"test accuracy {format_or_dash(e['accuracy'], '.2%')}")


def _privacy_text(e: dict) -> str:
    return (f", epsilon {e['epsilon']:.2f} (delta {e['privacy']['delta']:g})"
            if "epsilon" in e else "")


def _replan_line(e: dict) -> str:
    """An adaptive run's decision before a round, in one line."""
    def placements(ps: dict) -> str:
        return ", ".join(f"{n} p={p} N={k}" for n, (p, k) in ps.items())
    head = f"re-plan for round {e['round']}: "
    if e.get("error"):
        return head + f"kept {placements(e['new'])} (re-planning failed: {e['error']})"
    if e["changed"]:
        return head + (f"{placements(e['new'])} (was {placements(e['old'])}), predicted "
                       f"{e['predicted_gain']:.2f}x faster; {e['reason']}")
    return head + f"kept {placements(e['new'])}; {e['reason']}"


def host_facts_table(results: list) -> Table:
    table = Table(title="inventory check")
    for col in ("host", "role", "reachable", "ssh ms", "python", "edgectl", "torch", "cpu",
                "cores", "memory", "free disk"):
        table.add_column(col)
    for r in results:
        if not r.ok:
            table.add_row(r.host.name, r.host.role, "[red]no[/]", "", "", "", "", r.error)
            continue
        f = r.value
        table.add_row(r.host.name, r.host.role, "yes", f"{f.latency_ms:.1f}", f.python,
                      f.edgectl or "-", f.torch or "-", f.cpu, str(f.cores),
                      f"{f.memory_gb:.1f} GiB", f"{f.disk_free_gb:.1f} GiB")
    return table


def provision_table(results: list) -> Table:
    table = Table(title="provision")
    for col in ("host", "result", "edgectl", "torch", "python"):
        table.add_column(col)
    for r in results:
        if not r.ok:
            table.add_row(r.host.name, f"[red]failed[/]: {r.error}", "", "", "")
            continue
        v = r.value.versions
        action = {"local": "local: runs from this checkout, nothing to install"}.get(
            r.value.action, r.value.action)
        table.add_row(r.host.name, action, v.get("edgectl", ""), v.get("torch", ""),
                      v.get("python", ""))
    return table


def testbed_table(testbeds: list) -> Table:
    table = Table(title="testbeds")
    for col in ("name", "subnet", "hosts", "inventory"):
        table.add_column(col)
    for tb in testbeds:
        table.add_row(tb.name, tb.subnet, ", ".join(f"{h.name} {h.address}" for h in tb.hosts),
                      tb.inventory_path)
    return table


def profile_tables(result, batch_size: int) -> Group:
    compute = Table(title=f"compute per host at batch {batch_size} (whole model)")
    for col in ("host", "threads", "forward ms", "backward ms", "step ms",
                "agent CPU ms/task", "cpu"):
        compute.add_column(col, justify="left" if col in ("host", "cpu") else "right")
    hosts = {**result.devices, result.server.host: result.server}
    for name, prof in hosts.items():
        fwd = sum(prof.forward_time(i, batch_size) for i in range(prof.num_blocks))
        bwd = sum(prof.backward_time(i, batch_size) for i in range(prof.num_blocks))
        step = prof.step_s_per_param * sum(b.params for b in prof.blocks)
        quota = prof.cpu.get("quota")
        per_task = prof.agent_task_cpu_s   # the task probe's (agents.taskprobe); devices only
        compute.add_row(name, str(prof.threads), f"{fwd * 1e3:.1f}", f"{bwd * 1e3:.1f}",
                        f"{step * 1e3:.2f}", "" if per_task is None else f"{per_task * 1e3:.2f}",
                        f"{prof.cpu.get('cores')} cores" + (f", quota {quota:g}" if quota else ""))
    links = Table(title="links to the server")
    for col in ("device", "uplink Mbit/s", "downlink Mbit/s", "rtt ms"):
        links.add_column(col, justify="left" if col == "device" else "right")
    for name, link in result.links.items():
        links.add_row(name, f"{link.uplink_bps / 1e6:,.1f}", f"{link.downlink_bps / 1e6:,.1f}",
                      f"{link.rtt_s * 1e3:.2f}")
    note = ("measured now: " + ", ".join(result.measured)) if result.measured else \
        "all reused from the profile store (--refresh measures again)"
    return Group(compute, links, note)


def stored_profiles_table(records: list) -> Table:
    import time
    table = Table(title="stored profiles")
    for col in ("kind", "host", "what", "age", "file"):
        table.add_column(col)
    for path, data in records:
        what = (f"{data.get('model')} {'x'.join(map(str, data.get('input_shape', [])))}"
                if data.get("kind") == "compute" else
                f"up {data.get('uplink_bps', 0) / 1e6:,.1f} / down "
                f"{data.get('downlink_bps', 0) / 1e6:,.1f} Mbit/s")
        age = time.time() - data.get("measured_at", 0)
        table.add_row(str(data.get("kind")), str(data.get("host") or data.get("device")), what,
                      f"{age / 60:.0f} min", str(path))
    return table


def plan_table(plan) -> Table:
    table = Table(title=f"plan for {plan.model}, B={plan.batch_size}: predicted iteration "
                        f"{plan.iteration_s * 1e3:.1f} ms, round {plan.round_s:.2f} s "
                        f"(fl {plan.fl_round_s:.2f} s, split {plan.split_round_s:.2f} s)")
    table.caption = ("ms per iteration: the iteration, then the busy time of the device's "
                     "compute, uplink, its share of the server, downlink")
    # short headers: the table fits 80 columns with device names of up to 10 characters
    for col in ("device", "p", "N", "iter ms", "dev", "up", "srv", "down", "bottleneck"):
        table.add_column(col, justify="left" if col in ("device", "bottleneck") else "right",
                         no_wrap=True)
    for d in plan.devices:
        busy = [d.busy_s.get(r, 0.0) * 1e3 for r in ("device.compute", "uplink",
                                                     "server.compute", "downlink")]
        table.add_row(d.device, str(d.split_point), str(d.microbatches),
                      f"{d.iteration_s * 1e3:.1f}", *[f"{b:.1f}" for b in busy],
                      _BOTTLENECK_WORDS.get(d.bottleneck, d.bottleneck))
    return table


_BOTTLENECK_WORDS = {"device.compute": "device", "server.compute": "server",
                     "shared.cpu": "shared cores"}


def shaped_table(shaped: list) -> Table:
    table = Table(title="shaping: requested and measured")
    for col in ("device", "up", "measured up", "down", "measured down"):
        table.add_column(col, justify="left" if col == "device" else "right")

    def mbit(bps: float | None) -> str:
        return "-" if bps is None else f"{bps / 1e6:,.1f} mbit"

    for s in shaped:
        table.add_row(s.device, s.up or "-", mbit(s.measured_up_bps), s.down or "-",
                      mbit(s.measured_down_bps))
    return table
