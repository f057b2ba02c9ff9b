"""Listing and comparing run records (edgectl.runs.catalog) from synthetic records."""

from __future__ import annotations

import json

import pytest

from edgectl.errors import ConfigError, UsageError
from edgectl.runs.catalog import compare_runs, find_run, list_runs
from tests.run_records import DOWN_BYTES, UP_BYTES, write_run

PIPAR = "20240501-120000-pipar-ab12"
FL = "20240501-120500-fl-cd34"


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    write_run(folder, PIPAR, accuracies=(0.5, 0.842))
    write_run(folder, FL, strategy="fl", lr=0.1, accuracies=(0.4, 0.6, 0.7),
              shaping=[{"device": d, "up": "10mbit", "down": "10mbit"} for d in ("d1", "d2")])
    crashed = write_run(folder, "20240501-121000-split-ef56", strategy="split",
                        status="running", rounds_planned=4, summary=False)
    with open(crashed / "rounds.jsonl", "a") as f:
        f.write('{"type": "round", "round": 2, "acc')   # cut short by a crash
    (folder / "notes").mkdir()                        # no run.json: not a run record
    (folder / "notes" / "todo.txt").write_text("x")
    (folder / "README.md").write_text("a file, not a folder")
    bad = folder / "20240501-130000-pipar-bad1"
    bad.mkdir()
    (bad / "run.json").write_text('{"run_id": "20240501-13')
    return folder


def test_the_listing_has_every_run_record_and_only_those(runs):
    entries = {e.id: e for e in list_runs(runs)}
    assert list(entries) == [PIPAR, FL, "20240501-121000-split-ef56",
                             "20240501-130000-pipar-bad1"]
    pipar = entries[PIPAR]
    assert (pipar.strategy, pipar.model, pipar.status) == ("pipar", "vgg5", "completed")
    assert (pipar.rounds_completed, pipar.rounds_planned) == (2, 2)
    assert pipar.final_accuracy_pct == pytest.approx(84.2)
    assert pipar.iteration_ms == pytest.approx(100.0)
    assert pipar.started == 1714564800.0 and pipar.path == str(runs / PIPAR)


def test_a_run_still_going_or_crashed_and_an_unreadable_one_are_listed(runs):
    entries = {e.id: e for e in list_runs(runs)}
    running = entries["20240501-121000-split-ef56"]
    assert running.status == "running" and (running.rounds_completed,
                                            running.rounds_planned) == (2, 4)
    assert running.iteration_ms is None          # no summary.json yet
    unreadable = entries["20240501-130000-pipar-bad1"]
    assert unreadable.status == "unreadable" and unreadable.strategy is None


def test_a_missing_folder_has_no_runs_and_a_bench_folder_lists_its_runs(tmp_path, runs):
    assert list_runs(tmp_path / "none") == []
    (runs.parent / "bench.json").write_text("{}")
    assert len(list_runs(runs.parent)) == 4


def test_a_run_is_found_by_folder_id_or_unique_start(runs, tmp_path):
    assert find_run(str(runs / FL), tmp_path / "elsewhere") == runs / FL
    assert find_run(FL, runs) == runs / FL
    assert find_run("20240501-1205", runs) == runs / FL
    with pytest.raises(UsageError, match=r"run '20240501-12' is ambiguous: " + PIPAR):
        find_run("20240501-12", runs)
    with pytest.raises(UsageError) as missing:
        find_run("20991231-x", runs)
    assert str(missing.value) == (f"run '20991231-x' not found: no such folder, nor a run id "
                                  f"under {runs}; list them with `edgectl runs --runs-dir "
                                  f"{runs}`")
    with pytest.raises(UsageError, match="not a run record .no run.json.*edgectl runs"):
        find_run(str(runs / "notes"), runs)


def test_compare_shows_strategy_model_and_only_the_config_that_differs(runs):
    pipar, fl = compare_runs([runs / PIPAR, runs / FL])
    assert (pipar.id, fl.id) == (PIPAR, FL)
    assert list(pipar.config) == ["strategy", "model", "rounds", "lr", "link"]
    assert pipar.config == {"strategy": "pipar", "model": "vgg5", "rounds": 2, "lr": 0.01,
                            "link": "unshaped links"}
    assert fl.config["link"] == "links 10mbit" and fl.config["lr"] == 0.1
    assert "dataset" not in pipar.config and "batch_size" not in pipar.config


def test_compare_puts_the_results_side_by_side(runs):
    pipar, fl = compare_runs([runs / PIPAR, runs / FL])
    summary = json.loads((runs / PIPAR / "summary.json").read_text())
    server_busy = next(r["busy_s"] for r in summary["resources"]
                       if r["resource"] == "server.compute")
    assert pipar.results == pytest.approx({
        "status": "completed", "rounds": 2, "iteration_ms": 100.0, "train_s": 0.6,
        "accuracy_pct": 84.2, "bytes_up": 2 * 2 * 3 * UP_BYTES,
        "bytes_down": 2 * 2 * 3 * DOWN_BYTES, "server_idle_s": 0.6 - server_busy})
    assert fl.results["train_s"] == pytest.approx(0.9) and fl.results["rounds"] == 3


def test_compare_of_a_run_without_summary_gives_what_its_rounds_say(runs):
    _, crashed = compare_runs([runs / PIPAR, runs / "20240501-121000-split-ef56"])
    assert crashed.results["train_s"] == pytest.approx(0.6)
    assert crashed.results["accuracy_pct"] == pytest.approx(75.0)
    assert crashed.results["iteration_ms"] is None and crashed.results["bytes_up"] is None


def test_compare_needs_two_readable_runs(runs):
    with pytest.raises(UsageError, match="two runs or more"):
        compare_runs([runs / PIPAR])
    with pytest.raises(ConfigError, match="run.json: does not parse"):
        compare_runs([runs / PIPAR, runs / "20240501-130000-pipar-bad1"])
