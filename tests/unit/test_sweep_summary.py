"""Repeats aggregated and the paper's comparison, from hand-built per-run rows (the shape
sweep_report.bench_rows gives), and the CSVs written from them."""

from __future__ import annotations

import csv

import pytest

from edgectl.runs.report import placement_text
from edgectl.runs.sweep_report import bench_markdown, results_columns, write_csv
from edgectl.runs.sweep_summary import (
    Spread,
    aggregate,
    paper_markdown,
    speedup_text,
    summary_columns,
    summary_rows,
)


def row(strategy, repeat, train_s, idle_s, accuracy, *, setting="cpu=0.1", bandwidth="10mbit",
        status="completed", plan="", model="vgg5", batches=3, values=None):
    values = {"testbed.cpu": (0.1,), "adapt": False} if values is None else values
    done = status == "completed"
    return {"strategy": strategy, "model": model, "bandwidth": bandwidth, "repeat": repeat,
            "setting": setting, **values, "values": values, "status": status,
            "error": None if done else "boom", "run_dir": f"runs/{strategy}-{repeat}",
            **{f"iteration_s_{k}": train_s / batches if done else None
               for k in ("median", "min", "max")},
            **{f"round_s_{k}": train_s if done else None for k in ("median", "min", "max")},
            "train_s": train_s if done else None,
            "server_idle_s": idle_s if done else None,
            "final_accuracy": accuracy if done else None, "plan": plan if done else None}


ROWS = [
    # repeat-major, strategies side by side, as the sweep makes them
    row("fl", 0, 10.0, 10.0, 0.80, plan="fl"),
    row("split", 0, 8.0, 6.0, 0.81, plan="p=2 N=1"),
    row("pipar", 0, 4.0, 1.0, 0.82, plan="p=2 N=4"),
    row("fl", 1, 12.0, 12.0, 0.84, plan="fl"),
    row("split", 1, 9.0, 7.0, 0.83, plan="p=2 N=1"),
    row("pipar", 1, 6.0, 3.0, 0.86, plan="p=1 N=8"),
    row("fl", 2, 11.0, 11.0, 0.82, plan="fl"),
    row("split", 2, 8.0, 6.5, 0.85, plan="p=2 N=1"),
    row("pipar", 2, 5.0, 2.0, 0.84, plan="p=2 N=4"),
    row("pipar", 3, 0.0, 0.0, None, status="failed"),
    # a second condition where pipar loses to fl and there is no split
    row("fl", 0, 4.0, 4.0, 0.7, bandwidth="unshaped", plan="fl"),
    row("pipar", 0, 5.0, 2.5, 0.7, bandwidth="unshaped", plan="p=2 N=2"),
]


def by_strategy(aggs, bandwidth="10mbit"):
    return {a.strategy: a for a in aggs if a.bandwidth == bandwidth}


def test_repeats_of_one_condition_and_strategy_aggregate_to_median_and_spread():
    aggs = aggregate(ROWS)
    assert [(a.bandwidth, a.strategy) for a in aggs] == [
        ("10mbit", "fl"), ("10mbit", "split"), ("10mbit", "pipar"),
        ("unshaped", "fl"), ("unshaped", "pipar")]
    pipar = by_strategy(aggs)["pipar"]
    assert pipar.runs == 4 and pipar.n == 3          # the failed repeat is run, not counted
    assert pipar.figures["train_s"] == Spread(5.0, 4.0, 6.0, 3)
    assert pipar.figures["iteration_s"] == Spread(pytest.approx(5 / 3), 4 / 3, 2.0, 3)
    assert pipar.figures["server_idle_s"] == Spread(2.0, 1.0, 3.0, 3)
    assert pipar.final_accuracy.median == pytest.approx(0.84)
    assert pipar.plans == ("p=2 N=4", "p=1 N=8")
    assert pipar.values == {"testbed.cpu": (0.1,), "adapt": False}
    assert Spread.of([None, None]) == Spread()
    assert Spread.of([3.0, 1.0]) == Spread(2.0, 1.0, 3.0, 2)


def test_summary_rows_carry_speedups_in_training_time_within_the_condition():
    rows = {(r["bandwidth"], r["strategy"]): r for r in summary_rows(aggregate(ROWS))}
    pipar = rows["10mbit", "pipar"]
    assert pipar["speedup_over_fl"] == pytest.approx(11 / 5)
    assert pipar["speedup_over_split"] == pytest.approx(8 / 5)
    assert (pipar["n"], pipar["runs"], pipar["train_s_min"], pipar["train_s_max"]) == \
        (3, 4, 4.0, 6.0)
    assert pipar["setting"] == "cpu=0.1" and pipar["testbed.cpu"] == (0.1,)
    assert rows["10mbit", "fl"]["speedup_over_fl"] == pytest.approx(1.0)
    assert rows["unshaped", "pipar"]["speedup_over_fl"] == pytest.approx(0.8)
    assert rows["unshaped", "pipar"]["speedup_over_split"] is None


def test_the_paper_table_has_one_row_per_condition_with_pipar():
    lines = paper_markdown(aggregate(ROWS))
    assert lines[1] == "### vgg5"
    header, _, fast, slow = lines[3:]
    assert header.startswith("| setting | bandwidth | n pipar/fl/split | training s pipar / "
                             "fl / split | pipar vs fl | pipar vs split | server idle s")
    cells = [c.strip() for c in fast.strip("|").split("|")]
    assert cells == ["cpu=0.1", "10mbit", "3/3/3", "5.00 / 11.00 / 8.00", "2.20x faster",
                     "1.60x faster", "2.00 / 11.00 / 6.50", "5.50x", "3.25x",
                     "84.0% / 82.0% / 83.0%", "p=2 N=4; p=1 N=8"]
    cells = [c.strip() for c in slow.strip("|").split("|")]
    assert cells == ["cpu=0.1", "unshaped", "1/1/-", "5.00 / 4.00 / -", "0.80x slower", "-",
                     "2.50 / 4.00 / -", "1.60x", "-", "70.0% / 70.0% / -", "p=2 N=2"]


def test_the_paper_table_drops_the_setting_column_without_settings_and_rows_without_pipar():
    rows = [dict(r, setting="") for r in ROWS if r["strategy"] != "pipar" or
            r["bandwidth"] == "10mbit"]
    lines = paper_markdown(aggregate(rows))
    assert lines[3].startswith("| bandwidth |")
    assert len(lines) == 6  # one condition: unshaped has no pipar run
    assert paper_markdown(aggregate([r for r in ROWS if r["strategy"] == "fl"])) == []


def test_speedup_text_says_slower_below_one():
    assert speedup_text(2.5) == "2.50x faster"
    assert speedup_text(1.0) == "1.00x faster"
    assert speedup_text(0.5) == "0.50x slower"
    assert speedup_text(None) == "-"


def test_report_md_puts_the_paper_table_first_then_aggregates_then_runs():
    text = bench_markdown("t", ROWS, [])
    paper = text.index("## PiPar against fl and split")
    assert paper < text.index("## Repeats aggregated") < text.index("## Runs") \
        < text.index("## Failed runs")
    assert "| cpu=0.1 | 10mbit | pipar | 3/4 | 1666.7 (1333.3-2000.0) | 5.00 (4.00-6.00) |" in text
    assert "### cpu=0.1: vgg5, 10mbit" in text
    assert "- pipar vgg5 10mbit cpu=0.1 #3: boom" in text


def test_csvs_get_one_column_per_swept_key(tmp_path):
    axes = ("testbed.cpu", "adapt")
    columns = results_columns(axes)
    assert columns[:9] == ("strategy", "model", "bandwidth", "up", "down", "repeat", "setting",
                           "testbed.cpu", "adapt")
    path = write_csv(ROWS, columns, tmp_path / "results.csv")
    with open(path, newline="") as f:
        first = next(csv.DictReader(f))
    assert (first["testbed.cpu"], first["adapt"], first["setting"]) == ("0.1", "false",
                                                                        "cpu=0.1")
    path = write_csv(summary_rows(aggregate(ROWS)), summary_columns(axes),
                     tmp_path / "summary.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["setting", "testbed.cpu", "adapt", "model", "bandwidth"]
    assert len(rows) == 5 and rows[2]["strategy"] == "pipar" and rows[2]["n"] == "3"
    assert float(rows[2]["train_s_median"]) == 5.0


def test_the_plan_text_names_each_devices_placement_and_what_adapt_changed():
    placements = {"num_blocks": 5, "devices": [
        {"device": "d1", "split_point": 2, "microbatches": 4, "mode": "pipar"},
        {"device": "d2", "split_point": 2, "microbatches": 4, "mode": "pipar"}]}
    assert placement_text(placements) == "p=2 N=4"
    rounds = [{"round": 1, "placements": {"d1": [2, 4], "d2": [2, 4]}},
              {"round": 2, "placements": {"d1": [3, 8], "d2": [2, 4]}},
              {"round": 3, "placements": {"d1": [3, 8], "d2": [2, 4]}},
              {"round": 4}]
    assert placement_text(placements, rounds) == "p=2 N=4; round 2: d1 p=3 N=8, d2 p=2 N=4"
    fl = {"num_blocks": 5, "devices": [{"device": "d1", "split_point": 5, "microbatches": 1,
                                        "mode": "fl"}]}
    assert placement_text(fl, [{"round": 0, "placements": {"d1": [5, 1]}}]) == "fl"
    assert placement_text(None) == ""
    mixed = {"num_blocks": 5, "devices": [{"device": "d1", "split_point": 1, "microbatches": 2},
                                          {"device": "d2", "split_point": 1, "microbatches": 1}]}
    same_in_another_order = [{"round": 1, "placements": {"d2": [1, 1], "d1": [1, 2]}}]
    assert placement_text(mixed, same_in_another_order) == "d1 p=1 N=2, d2 p=1 N=1"


def test_a_dp_sweep_reports_epsilon_beside_accuracy_and_a_plain_one_does_not():
    private = [{**row(s, 0, t, 1.0, 0.5, setting="dp=true", values={"dp": True}),
                "epsilon": e} for s, t, e in (("fl", 9.0, 0.61), ("split", 8.0, 0.62),
                                               ("pipar", 4.0, 0.63))]
    plain = [row(s, 0, t, 1.0, 0.8, setting="dp=false", values={"dp": False})
             for s, t in (("fl", 3.0), ("split", 2.0), ("pipar", 1.0))]
    table = "\n".join(paper_markdown(aggregate(private + plain)))
    assert "| epsilon pipar / fl / split |" in table
    assert "| 0.63 / 0.61 / 0.62 |" in table and "| - / - / - |" in table
    assert "epsilon" not in "\n".join(paper_markdown(aggregate(plain)))
    by_setting = {(r["setting"], r["strategy"]): r for r in summary_rows(aggregate(private))}
    assert by_setting[("dp=true", "pipar")]["epsilon_median"] == 0.63
    markdown = bench_markdown("dp", private + plain, [])
    assert "| accuracy | epsilon |" in markdown and "| 50.0% | 0.63 |" in markdown
