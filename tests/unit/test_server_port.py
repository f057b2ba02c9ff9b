"""A device started alongside its server learns the server's port from the coordinator."""

from __future__ import annotations

import os
import threading

import pytest

from agents.config import AgentSettings
from agents.control import ControlChannel
from agents.errors import AgentError
from agents.session import with_server_port

DEVICE = AgentSettings("device", "device1", "ab" * 16)


def test_a_port_in_the_settings_is_kept_and_nothing_is_read():
    given = AgentSettings("device", "device1", "ab" * 16, server_port=4321)
    assert with_server_port(given, None) is given


def test_without_a_port_the_device_waits_for_the_coordinators_message():
    """Over a real pipe, as the coordinator writes an agent's stdin: a message of another
    kind first is skipped, the launch line is not taken for a message."""
    read, write = os.pipe()
    control = ControlChannel(read)
    os.write(write, b'{"launch": true}\n')
    assert control.readline() == '{"launch": true}'
    control.watch(on_close=lambda: None)
    later = threading.Timer(0.2, os.write, args=(
        write, b'{"type": "placements"}\n{"type": "server", "port": 40123}\n'))
    later.start()
    try:
        assert with_server_port(DEVICE, control).server_port == 40123
    finally:
        later.join()
        os.close(write)


@pytest.mark.parametrize("port", [0, 70000, "40123", True, None])
def test_a_server_message_without_a_valid_port_is_one_line(port):
    control = ControlChannel()
    control.put({"type": "server", "port": port})
    with pytest.raises(AgentError, match="no valid port"):
        with_server_port(DEVICE, control)


def test_no_port_and_no_channel_says_what_is_missing():
    with pytest.raises(AgentError, match="needs the server's port"):
        with_server_port(DEVICE, None)
