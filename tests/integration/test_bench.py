"""`edgectl bench` end to end on the local fleet: bench/small.yaml's two tiny real runs, the
tables and plots computed from their records, and `render_report` on one of them."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.errors import ConfigError
from edgectl.runs.bench import progress_bar, run_bench
from edgectl.runs.bench_spec_parse import load_bench_spec, parse_bench_spec
from edgectl.runs.sweep_report import CSV_COLUMNS, render_report, results_columns

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    spec = load_bench_spec(ROOT / "bench" / "small.yaml")
    out = tmp_path_factory.mktemp("bench") / spec.name
    seen, screen = [], io.StringIO()
    with progress_bar(Console(file=screen, width=140)) as show:
        def on_progress(p):
            seen.append(p)
            show(p)
        result = run_bench(spec, out, on_progress)
    return spec, result, seen, screen.getvalue()


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert len(data) > 1024, f"{path.name} is only {len(data)} bytes"


def test_every_combination_is_a_completed_run_with_its_own_record(sweep, no_leftover_agents):
    spec, result, _, _ = sweep
    assert [r.status for r in result.runs] == ["completed"] * 2, [r.error for r in result.runs]
    assert [r.combination.strategy for r in result.runs] == ["fl", "pipar"]
    for run in result.runs:
        info = json.loads((result.out_dir / run.run_dir / "run.json").read_text())
        assert Path(run.run_dir).parent == Path("runs")
        assert info["status"] == "completed"
        assert info["config"]["strategy"] == run.combination.strategy
        assert info["bench"]["bandwidth"] == "unshaped" and info["bench"]["repeat"] == 0
    pipar = json.loads((result.out_dir / result.runs[1].run_dir / "run.json").read_text())
    assert {(d["split_point"], d["microbatches"]) for d in pipar["config"]["devices"]} \
        == {(2, 2)}
    bench = json.loads((result.out_dir / "bench.json").read_text())
    assert len(bench["runs"]) == 2 and bench["spec"]["name"] == "small"


def test_results_csv_has_one_row_per_run_computed_from_the_events(sweep):
    _, result, _, _ = sweep
    rows = _rows(result.out_dir)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["strategy"], r["model"], r["bandwidth"], r["repeat"], r["status"])
            for r in rows] == [("fl", "vgg5", "unshaped", "0", "completed"),
                               ("pipar", "vgg5", "unshaped", "0", "completed")]
    fl, pipar = rows
    for row in rows:
        assert row["batches_per_round"] == "3" and row["rounds"] == "1"
        assert float(row["iteration_s_min"]) <= float(row["iteration_s_median"]) \
            <= float(row["iteration_s_max"])
        assert float(row["iteration_s_median"]) == pytest.approx(
            float(row["round_s_median"]) / 3, rel=1e-3)
        assert 0.0 <= float(row["device_idle_fraction"]) < 1.0
        assert 0.0 <= float(row["final_accuracy"]) <= 1.0
        assert float(row["bytes_up_per_round"]) > 0 and float(row["bytes_down_per_round"]) > 0
        assert row["speedup_over_split"] == ""  # no split run in this sweep
    assert float(fl["speedup_over_fl"]) == pytest.approx(1.0)
    assert float(pipar["speedup_over_fl"]) == pytest.approx(
        float(fl["round_s_median"]) / float(pipar["round_s_median"]), rel=1e-3)
    assert float(fl["server_idle_fraction"]) == 1.0  # fl never trains on the server
    assert float(pipar["server_idle_fraction"]) < 1.0


def test_report_and_plots_are_written(sweep):
    _, result, _, _ = sweep
    out = result.out_dir
    report = (out / "report.md").read_text()
    assert "| fl |" in report and "| pipar |" in report and "## vgg5, unshaped" in report
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"round_time_vs_bandwidth_vgg5.png", "idle_by_resource_vgg5.png",
                    "accuracy_vs_time_vgg5.png", "timeline_vgg5_unshaped.png"}
    for name in pngs:
        _assert_png(out / name)
        assert f"`{name}`" in report
    assert set(result.files) == {out / "results.csv", out / "summary.csv", out / "report.md",
                                 *(out / n for n in pngs)}


def test_progress_covers_the_sweep_and_reaches_the_end(sweep):
    _, result, seen, screen = sweep
    assert seen[-1].completed == seen[-1].total == 2
    done = [p.completed for p in seen]
    assert done == sorted(done), "progress went backwards"
    assert any(p.current == "pipar vgg5 unshaped #0" for p in seen)
    assert any(0 < p.completed < 1 for p in seen), "no progress within a run"
    assert "2 runs" in screen


def test_render_report_of_one_run(sweep):
    _, result, _, _ = sweep
    run_dir = result.out_dir / result.runs[1].run_dir
    made = render_report(run_dir)
    assert made[0] == run_dir / "report.md"
    assert {p.name for p in made[1:]} == {"timeline.png", "accuracy_vs_time.png",
                                          "busy_idle.png", "rounds.png"}
    for png in made[1:]:
        _assert_png(png)
    text = made[0].read_text()
    assert "strategy pipar" in text and "server.compute" in text and "timeline.png" in text


def test_render_report_of_the_bench_folder_writes_its_outputs_again(sweep):
    _, result, _, _ = sweep
    (result.out_dir / "results.csv").unlink()
    made = render_report(result.out_dir)
    assert len(_rows(result.out_dir)) == 2 and result.out_dir / "report.md" in made


def test_render_report_refuses_what_is_no_run_record(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'nope'}: no such folder"):
        render_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: not a run record"):
        render_report(tmp_path)


def test_a_failed_combination_is_recorded_and_the_sweep_goes_on(tmp_path, no_leftover_agents):
    empty = tmp_path / "no-images"
    empty.mkdir()
    spec = parse_bench_spec({"strategies": ["fl", "split"], "rounds": 1, "max_batches": 1,
                             "dataset": f"folder:{empty}"}, "broken.yaml")
    result = run_bench(replace(spec, eval_samples=10), tmp_path / "out")
    assert [r.status for r in result.runs] == ["failed", "failed"]
    assert all("no images found" in r.error for r in result.runs)
    rows = _rows(tmp_path / "out")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["iteration_s_median"] == "" and "no images found" in rows[0]["error"]
    assert "## Failed runs" in (tmp_path / "out" / "report.md").read_text()


def test_bench_prints_json_of_its_runs_and_files(tmp_path, no_leftover_agents):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("strategies: [fl]\nrounds: 1\nmax_batches: 1\neval_samples: 10\n")
    result = CliRunner().invoke(app, ["bench", str(spec), "--out", str(tmp_path / "out"),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["status"] for r in data["runs"]] == ["completed"]
    assert all(Path(f).is_file() for f in data["files"])


def test_a_swept_option_runs_every_value_and_reaches_only_the_strategies_it_applies_to(
        tmp_path, no_leftover_agents):
    spec = tmp_path / "axis.yaml"
    spec.write_text("strategies: [fl, pipar]\nrounds: 1\nmax_batches: 2\neval_samples: 100\n"
                    "pipar: {split_point: 2}\nsweep: {microbatches: [1, 4]}\n")
    result = run_bench(load_bench_spec(spec), tmp_path / "out")
    assert [(r.combination.strategy, r.combination.setting.label, r.status)
            for r in result.runs] == [("fl", "microbatches=1", "completed"),
                                      ("pipar", "microbatches=1", "completed"),
                                      ("fl", "microbatches=4", "completed"),
                                      ("pipar", "microbatches=4", "completed")], \
        [r.error for r in result.runs]
    infos = [json.loads((result.out_dir / r.run_dir / "run.json").read_text())
             for r in result.runs]
    assert [{(d["split_point"], d["microbatches"]) for d in i["config"]["devices"]}
            for i in infos[1::2]] == [{(2, 1)}, {(2, 4)}]
    assert [i["bench"]["not_applied"] for i in infos] == [["microbatches"], [],
                                                          ["microbatches"], []]
    assert infos[2]["bench"]["values"] == {"microbatches": 4}
    rows = _rows(result.out_dir)
    assert list(rows[0]) == list(results_columns(("microbatches",)))
    assert [(r["strategy"], r["setting"], r["microbatches"]) for r in rows] == [
        ("fl", "microbatches=1", "1"), ("pipar", "microbatches=1", "1"),
        ("fl", "microbatches=4", "4"), ("pipar", "microbatches=4", "4")]
    with open(result.out_dir / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [(r["setting"], r["strategy"], r["n"]) for r in summary] == [
        ("microbatches=1", "fl", "1"), ("microbatches=1", "pipar", "1"),
        ("microbatches=4", "fl", "1"), ("microbatches=4", "pipar", "1")]
    assert float(summary[1]["speedup_over_fl"]) == pytest.approx(
        float(summary[0]["train_s_median"]) / float(summary[1]["train_s_median"]), rel=1e-3)
    report = (result.out_dir / "report.md").read_text()
    assert "| microbatches=4 | unshaped | 1/1/- |" in report
    assert {p.name for p in result.out_dir.glob("timeline_*.png")} == {
        "timeline_vgg5_microbatches-1_unshaped.png", "timeline_vgg5_microbatches-4_unshaped.png"}

