"""The commands over run records as a user meets them: `edgectl runs`, `runs compare`,
`report --csv` and `--figure-format`, on synthetic records (nothing trains here)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.errors import EXIT_USAGE
from tests.integration.test_cli import one_line_error
from tests.run_records import write_run

runner = CliRunner()
PIPAR = "20240501-120000-pipar-ab12"
FL = "20240501-120500-fl-cd34"


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    write_run(folder, PIPAR, accuracies=(0.5, 0.842))
    write_run(folder, FL, strategy="fl", lr=0.1)
    (folder / "not-a-run").mkdir()
    bad = folder / "20240501-130000-pipar-bad1"
    bad.mkdir()
    (bad / "run.json").write_text("{")
    return folder


def test_runs_lists_the_records_as_a_table(runs):
    result = runner.invoke(app, ["runs", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()
             if line.strip().startswith("2024")}
    assert lines[PIPAR][1:7] == ["pipar", "vgg5", "completed", "2/2", "84.2%", "100.0"]
    assert lines[FL][1:3] == ["fl", "vgg5"]
    assert lines["20240501-130000-pipar-bad1"][3] == "unreadable"
    assert "not-a-run" not in result.stdout


def test_runs_json_is_the_same_data_on_stdout(runs):
    result = runner.invoke(app, ["runs", "--runs-dir", str(runs), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs_dir"] == str(runs)
    first = data["runs"][0]
    assert first["id"] == PIPAR and first["final_accuracy_pct"] == pytest.approx(84.2)
    assert first["rounds_completed"] == 2 and first["status"] == "completed"
    assert [r["status"] for r in data["runs"]] == ["completed", "completed", "unreadable"]


def test_no_runs_says_so_and_where(tmp_path):
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "none"),
                                 "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["runs"] == []
    assert "no run records in" in result.stderr


def test_compare_puts_runs_side_by_side(runs):
    result = runner.invoke(app, ["runs", "compare", PIPAR, str(runs / FL),
                                 "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    rows = {line.strip().split("  ")[0]: line.split() for line in result.stdout.splitlines()
            if line.strip()}
    assert rows["lr"][-2:] == ["0.01", "0.1"]
    assert rows["accuracy"][-2:] == ["84.2%", "75.0%"]
    assert rows["iteration ms"][-2:] == ["100.0", "100.0"]
    assert "dataset" not in rows and "batch_size" not in rows


def test_compare_json_and_the_parents_runs_dir(runs):
    result = runner.invoke(app, ["runs", "--runs-dir", str(runs), "compare", PIPAR, FL,
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    pipar, fl = json.loads(result.stdout)["runs"]
    assert (pipar["id"], fl["id"]) == (PIPAR, FL)
    assert pipar["config"]["lr"] == 0.01 and fl["config"]["lr"] == 0.1
    assert fl["results"]["accuracy_pct"] == pytest.approx(75.0)


def test_an_unknown_run_is_a_one_line_error_saying_how_to_list_runs(runs):
    line = one_line_error(runner.invoke(app, ["runs", "compare", PIPAR, "nope",
                                              "--runs-dir", str(runs)]), EXIT_USAGE)
    assert "'nope' not found" in line and f"edgectl runs --runs-dir {runs}" in line


@pytest.mark.parametrize("args", [["runs"], ["runs", "compare", PIPAR, FL],
                                  ["runs", "--format", "json"]])
def test_runs_never_imports_torch(runs, args):
    """Listing stays quick: torch (1-1.5 s to import here) is for the commands that train."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom edgectl.cli import app\n"
            f"r = CliRunner().invoke(app, {[*args, '--runs-dir', str(runs)]!r})\n"
            "assert r.exit_code == 0, r.output\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_report_csv_writes_both_files_and_says_where(runs):
    run = runs / PIPAR
    result = runner.invoke(app, ["report", str(run), "--csv", "--format", "json",
                                 "--figure-format", "svg"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["csv"] == {"rounds": str(run / "rounds.csv"),
                           "resources": str(run / "resources.csv")}
    assert str(run / "timeline.svg") in data["files"]
    assert str(run / "rounds.csv") in result.stderr
    with open(run / "rounds.csv", newline="") as f:
        assert [r["accuracy_pct"] for r in csv.DictReader(f)] == ["50", "84.2"]
    table = runner.invoke(app, ["report", str(run), "--csv"])
    assert table.exit_code == 0 and str(run / "resources.csv") in table.stdout


def test_report_without_csv_writes_none(runs):
    result = runner.invoke(app, ["report", str(runs / FL), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["csv"] is None
    assert not (runs / FL / "rounds.csv").exists()


@pytest.mark.parametrize("args", [["report", "{run}"], ["bench", "{run}/spec.yaml"],
                                  ["train"]])
def test_a_bad_figure_format_is_a_one_line_usage_error(runs, args):
    args = [a.format(run=runs / PIPAR) for a in args]
    line = one_line_error(runner.invoke(app, [*args, "--figure-format", "gif"]), EXIT_USAGE)
    assert line == "error: --figure-format 'gif' is unknown; choose png, svg or pdf"
