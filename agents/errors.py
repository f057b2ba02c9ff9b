"""Errors raised by the agents' code that a user can cause (bad data, bad peer, bad config)."""


class AgentError(ValueError):
    """Base of the agents' user-facing errors; the message says what is wrong and the fix."""


class DatasetError(AgentError):
    """A dataset is missing, unreadable or corrupt; the message names the paths looked at."""
