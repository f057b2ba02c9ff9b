"""The run config agents receive: validated, and round-tripped through the launch line."""

from __future__ import annotations

import pytest

from agents.config import AgentSettings, DeviceSpec, RunConfig, launch_line, parse_launch_line
from agents.errors import AgentError

RUN = dict(run_id="r", strategy="pipar", model="vgg5", dataset="fashion-mnist",
           devices=(DeviceSpec("d1", 2, 4), DeviceSpec("d2", 1, 2)))


def test_launch_line_round_trips():
    run, agent = RunConfig(**RUN), AgentSettings("device", "d1", "ab" * 16, server_port=5)
    assert parse_launch_line(launch_line(run, agent)) == (run, agent)


@pytest.mark.parametrize("change,message", [
    ({"rounds": 0}, "rounds must be positive"),
    ({"batch_size": -1}, "batch_size must be positive"),
    ({"devices": ()}, "at least one device"),
    ({"devices": (DeviceSpec("a"), DeviceSpec("a"))}, "device names repeat"),
    ({"devices": (DeviceSpec("a", 1, 64),)}, "microbatches must be 1..batch_size"),
    ({"devices": (DeviceSpec("a", 0, 4),)}, "device a: split point 0 would send its raw "
                                             "samples to the server"),
])
def test_bad_run_configs_are_refused(change, message):
    with pytest.raises(AgentError, match=message):
        RunConfig(**{**RUN, **change})


def test_weak_or_malformed_secret_is_refused():
    with pytest.raises(AgentError, match="secret"):
        AgentSettings("device", "d1", "abcd")
    with pytest.raises(AgentError, match="secret"):
        AgentSettings("device", "d1", "zz" * 16)


def test_malformed_launch_line_is_one_clear_error():
    with pytest.raises(AgentError, match="launch config on stdin is malformed"):
        parse_launch_line("{not json")
    with pytest.raises(AgentError, match="unknown keys"):
        parse_launch_line('{"run": {"bogus": 1}, "agent": {}}')


def test_raw_upload_is_an_explicit_opt_in_of_the_run():
    allowed = RunConfig(**{**RUN, "devices": (DeviceSpec("a", 0, 4),), "allow_raw_upload": True})
    assert allowed.device("a").split_point == 0
    assert parse_launch_line(launch_line(allowed, AgentSettings("device", "a", "ab" * 16)))[0] \
        == allowed
    with pytest.raises(AgentError, match="does not allow raw upload"):
        RunConfig(**RUN).check_raw_upload("d1")   # what a device agent asks of a placement
