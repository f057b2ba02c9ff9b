"""`edgectl report RUN --csv`: rounds.csv and resources.csv, read back as a script would."""

from __future__ import annotations

import csv
import json

import pytest

from edgectl.errors import ConfigError, UsageError
from edgectl.runs.run_csv import RESOURCE_COLUMNS, ROUND_COLUMNS, write_run_csvs
from tests.run_records import DOWN_BYTES, UP_BYTES, write_run


def read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_rounds_csv_has_one_row_per_round_with_the_summarys_figures(tmp_path):
    run = write_run(tmp_path, accuracies=(0.5, None, 0.842))
    made = write_run_csvs(run)
    assert made.rounds == run / "rounds.csv" and made.resources == run / "resources.csv"
    columns, rows = read(made.rounds)
    assert tuple(columns) == ROUND_COLUMNS
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert [r["accuracy_pct"] for r in rows] == ["50", "", "84.2"]   # round 1: not evaluated
    assert rows[1]["test_loss"] == "" and float(rows[2]["test_loss"]) == pytest.approx(0.4)
    first = rows[0]
    assert float(first["train_s"]) == pytest.approx(0.3)
    assert float(first["eval_s"]) == pytest.approx(0.5)
    assert float(first["wall_s"]) == pytest.approx(0.8)
    assert float(first["loss"]) == pytest.approx(1.0)
    assert int(first["samples"]) == 192 and int(first["batches"]) == 3
    assert float(first["iteration_ms"]) == pytest.approx(100.0)
    # 2 devices x 3 mini-batches a round, each one activation up and one gradient down
    assert int(first["bytes_up"]) == 6 * UP_BYTES and int(first["bytes_down"]) == 6 * DOWN_BYTES


def test_resources_csv_has_busy_idle_utilization_and_bytes_per_host_and_resource(tmp_path):
    run = write_run(tmp_path)
    columns, rows = read(write_run_csvs(run).resources)
    assert tuple(columns) == RESOURCE_COLUMNS
    by = {(r["host"], r["resource"]): r for r in rows}
    assert set(by) == {("server", "server.compute"),
                       *((d, r) for d in ("d1", "d2")
                         for r in ("device.compute", "uplink", "downlink"))}
    d1 = by[("d1", "device.compute")]   # 50 ms of each 100 ms iteration, 6 iterations
    assert float(d1["busy_s"]) == pytest.approx(0.3)
    assert float(d1["idle_s"]) == pytest.approx(0.3)
    assert float(d1["utilization"]) == pytest.approx(0.5)
    assert int(by[("d2", "uplink")]["bytes"]) == 3 * 2 * UP_BYTES   # 3 a round, 2 rounds
    summary = json.loads((run / "summary.json").read_text())
    server = next(r for r in summary["resources"] if r["resource"] == "server.compute")
    assert float(by[("server", "server.compute")]["busy_s"]) == pytest.approx(server["busy_s"])


def test_a_run_without_summary_json_is_summarized_from_its_events(tmp_path):
    with_summary = read(write_run_csvs(write_run(tmp_path / "a")).rounds)
    without = read(write_run_csvs(write_run(tmp_path / "b", summary=False)).rounds)
    assert with_summary == without


def test_what_is_not_a_run_record_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a run record"):
        write_run_csvs(tmp_path)
    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(UsageError, match="is a bench folder.*pass one of its runs"):
        write_run_csvs(tmp_path)
