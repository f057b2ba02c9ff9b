"""The round plot of one run: drawn from events, with bandwidth changes and re-plans."""

from __future__ import annotations

from matplotlib.image import imread

from edgectl.runs.plots import plot_rounds


def events():
    rounds = [{"type": "round", "round": r, "start": 10.0 * r, "train_s": t}
              for r, t in enumerate((5.0, 4.0, 20.0, 9.0))]
    return rounds + [
        {"type": "bandwidth", "time": 19.0, "up": "2mbit", "down": "2mbit"},
        {"type": "replan", "round": 2, "changed": False, "predicted_new_round_s": 18.0,
         "new": {"a": [2, 4]}},
        {"type": "replan", "round": 3, "changed": True, "predicted_new_round_s": 8.0,
         "new": {"a": [5, 1], "b": [5, 1]}},
    ]


def test_a_run_with_changes_between_rounds_is_drawn(tmp_path):
    made = plot_rounds(events(), tmp_path / "rounds.png", "title")
    assert made == tmp_path / "rounds.png"
    height, width, _ = imread(made).shape
    assert width > 500 and height > 300


def test_no_rounds_no_plot(tmp_path):
    assert plot_rounds([{"type": "span"}], tmp_path / "rounds.png", "title") is None
    assert not (tmp_path / "rounds.png").exists()
