"""A remote command's stdin reaches invoke whole, not a byte per 10 ms read."""

from __future__ import annotations

import io

from invoke import Context
from invoke.runners import Local

from edgectl.fleet.hosts import _AllAtOnce

SCRIPT = "import json\nprint(json.dumps({'ok': True}))\n" * 40


def test_invoke_reads_a_plain_text_stream_one_byte_at_a_time():
    """Why `_AllAtOnce` exists: this is what fabric did with the verify script (1.5 KB)."""
    assert Local(Context()).read_our_stdin(io.StringIO(SCRIPT)) == SCRIPT[0]


def test_stdin_for_a_remote_command_is_read_whole_then_ends():
    stream, runner = _AllAtOnce(SCRIPT), Local(Context())
    assert runner.read_our_stdin(stream) == SCRIPT
    assert runner.read_our_stdin(stream) == ""   # end of input: invoke closes the stdin
