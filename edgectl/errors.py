"""The one error boundary: every error a user can cause, and the exit code it maps to.

Core code raises a subclass of `EdgectlError` whose message names the file, key or value
that is wrong and how to fix it. The lower packages (`partitions`, `agents`) cannot import
edgectl, so they raise their own `ValueError` subclasses; `exit_code_for` maps those too.
The CLI prints `error: <message>` and exits with the code; only a real bug shows a traceback.
"""

from __future__ import annotations

from agents.errors import AgentError, DatasetError
from partitions.errors import PartitionError

# Every exit code edgectl uses. README.md documents each one; tests/unit/test_errors.py
# checks that the two agree.
EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_FLEET = 5
EXIT_RUN_FAILED = 6
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141   # 128 + SIGPIPE, as a shell reports a pipeline's closed reader

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_BUG: "internal error (a bug: the traceback is shown, please report it)",
    EXIT_USAGE: "bad command-line usage: unknown option, malformed value, unknown name",
    EXIT_CONFIG: "invalid configuration file: inventory, plan or bench spec",
    EXIT_DATA: "dataset missing, unreadable or corrupt",
    EXIT_FLEET: "a host could not be reached, started or provisioned",
    EXIT_RUN_FAILED: "a training run failed: an agent crashed or the protocol broke",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C; everything started was stopped",
    EXIT_CLOSED_PIPE: "the output's reader went away (a closed pipe, as with head); nothing else",
}


class EdgectlError(Exception):
    """Base of every error a user can cause. `exit_code` says how the CLI exits."""

    exit_code = EXIT_USAGE


class UsageError(EdgectlError):
    exit_code = EXIT_USAGE


class ConfigError(EdgectlError):
    exit_code = EXIT_CONFIG


class DataError(EdgectlError):
    exit_code = EXIT_DATA


class FleetError(EdgectlError):
    exit_code = EXIT_FLEET


class RunFailed(EdgectlError):
    exit_code = EXIT_RUN_FAILED


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an error a user caused, or None for a bug."""
    if isinstance(exc, EdgectlError):
        return exc.exit_code
    if isinstance(exc, DatasetError):
        return EXIT_DATA
    if isinstance(exc, PartitionError | AgentError):
        return EXIT_USAGE
    return None
