"""Figures of a run and of a sweep: their file format, the server lane's colour per device,
accuracy in %, and titles that say what ran (not the run id)."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba

from edgectl.errors import UsageError
from edgectl.runs import plots
from edgectl.runs.bench_spec import UNSHAPED, Bandwidth, BenchRun, Combination
from edgectl.runs.figures import check_figure_format, link_text, run_title
from edgectl.runs.report import render_run_report
from edgectl.runs.sweep_report import write_bench_outputs
from tests.run_records import make_events, write_run

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def assert_format(path, fmt):
    assert path.suffix == f".{fmt}" and path.is_file()
    data = path.read_bytes()
    if fmt == "svg":
        assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000]
    else:
        assert data.startswith(MAGIC[fmt])


def test_a_bad_figure_format_names_the_choices():
    assert check_figure_format("svg") == "svg"
    with pytest.raises(UsageError, match=r"--figure-format 'jpg' is unknown; choose png, "
                                         r"svg or pdf"):
        check_figure_format("jpg")


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_a_run_report_draws_every_figure_in_the_format_asked(tmp_path, fmt):
    run = write_run(tmp_path)
    made = render_run_report(run, fmt)
    assert made[0] == run / "report.md"
    figures = made[1:]
    assert [p.stem for p in figures] == ["timeline", "accuracy_vs_time", "busy_idle", "rounds"]
    for path in figures:
        assert_format(path, fmt)
    report = (run / "report.md").read_text()
    assert f"`timeline.{fmt}`: one iteration" in report and "test accuracy (%)" in report


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_a_figure_drawn_again_is_the_same_file(tmp_path, fmt):
    run = write_run(tmp_path)
    first = [p.read_bytes() for p in render_run_report(run, fmt)[1:]]
    assert [p.read_bytes() for p in render_run_report(run, fmt)[1:]] == first


def test_a_report_refuses_a_bad_figure_format_before_drawing(tmp_path):
    run = write_run(tmp_path)
    with pytest.raises(UsageError, match="choose png, svg or pdf"):
        render_run_report(run, "jpeg")
    assert not (run / "report.md").exists()


def test_the_server_lane_has_one_colour_per_device_with_a_legend():
    fig = plots.timeline_figure([("pipar vgg5", make_events())], "title")
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert "server for d1" in labels and "server for d2" in labels
    assert "server train" not in labels      # every server span here names its device
    colours = {t.get_text(): h.get_facecolor() for t, h in zip(legend.get_texts(),
                                                                legend.legend_handles,
                                                                strict=True)}
    assert colours["server for d1"] != colours["server for d2"]
    # the bars on the server's lane carry those colours
    ax = fig.axes[0]
    lane = [t.get_text() for t in ax.get_yticklabels()].index("server compute")
    on_lane = {tuple(c.get_facecolor()[0]) for c in ax.collections
               if abs(c.get_paths()[0].get_extents().y0 - (lane - 0.38)) < 1e-6}
    assert {to_rgba(plots.DEVICE_COLORS[0]), to_rgba(plots.DEVICE_COLORS[1])} <= {
        to_rgba(c[:3]) for c in on_lane}


def test_server_spans_without_a_device_keep_the_shared_colour():
    events = [{k: v for k, v in e.items() if k != "device"} for e in make_events()]
    labels = [t.get_text() for t in plots.timeline_figure([("x", events)], "t")
              .legends[0].get_texts()]
    assert "server train" in labels and not any(x.startswith("server for") for x in labels)


def test_accuracy_is_drawn_in_percent():
    fig = plots.accuracy_figure({"pipar": [(1.0, 0.5), (2.0, 0.842)]}, "title")
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([50.0, 84.2])
    assert ax.get_ylim() == (0, 100) and "%" in ax.get_ylabel()


def test_titles_say_strategy_model_and_link_setting():
    info = {"config": {"strategy": "pipar", "model": "vgg5", "dataset": "cifar10"}}
    assert run_title(info) == "pipar vgg5 on cifar10, unshaped links"
    shaped = {**info, "shaping": [{"device": d, "up": "10mbit", "down": "25mbit"}
                                  for d in ("d1", "d2")]}
    assert run_title(shaped, [{"type": "bandwidth"}]) == \
        "pipar vgg5 on cifar10, links up 10mbit, down 25mbit, 1 bandwidth change"
    assert link_text({"shaping": [{"up": "5mbit", "down": "5mbit"}]}) == "links 5mbit"
    assert link_text({"shaping": [{"up": "5mbit"}, {"up": "1mbit"}]}) == \
        "links shaped per device"
    assert link_text({"bench": {"bandwidth": "up 1mbit down 2mbit"}}) == \
        "links up 1mbit down 2mbit"
    planned = {"plan": {"devices": [{"uplink_bps": 9.5e6, "downlink_bps": 19e6}]}}
    assert link_text(planned) == "unshaped links (measured up 9.5, down 19 Mbit/s)"


def test_a_run_reports_figures_are_titled_by_what_ran(tmp_path, monkeypatch):
    titles = []
    for name in ("plot_timelines", "plot_accuracy_vs_time", "plot_busy_idle", "plot_rounds"):
        def record(*args, _name=name, **kw):
            titles.append(args[-1] if _name != "plot_busy_idle" else args[3])
        monkeypatch.setattr(plots, name, record)
    run = write_run(tmp_path, shaping=[{"device": "d1", "up": "2mbit", "down": "2mbit"}])
    render_run_report(run)
    assert len(titles) == 4
    for title in titles:
        assert title.startswith("pipar vgg5 on fashion-mnist, links 2mbit: ")
        assert run.name not in title


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_a_sweeps_figures_follow_the_format(tmp_path, fmt):
    runs = []
    shaped = Bandwidth("5mbit", "5mbit")
    for strategy, bw in (("fl", UNSHAPED), ("pipar", UNSHAPED), ("pipar", shaped)):
        run = write_run(tmp_path / "runs", f"20240501-1200{len(runs)}0-{strategy}-0000",
                        strategy=strategy)
        runs.append(BenchRun(Combination(strategy, "vgg5", bw, 0), "completed",
                             str(run.relative_to(tmp_path))))
    files = write_bench_outputs(tmp_path, "t", runs, figure_format=fmt)
    figures = [f for f in files if f.suffix not in (".csv", ".md")]
    assert {f.name for f in figures} >= {f"round_time_vs_bandwidth_vgg5.{fmt}",
                                          f"idle_by_resource_vgg5.{fmt}",
                                          f"accuracy_vs_time_vgg5.{fmt}",
                                          f"timeline_vgg5_unshaped.{fmt}",
                                          f"timeline_vgg5_5mbit.{fmt}"}
    for f in figures:
        assert_format(f, fmt)
    assert not list(tmp_path.glob("*.png"))
