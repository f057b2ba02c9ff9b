"""Errors raised by the model zoo that a user can cause (unknown model, bad input shape)."""


class PartitionError(ValueError):
    """Base of partitions' user-facing errors; the message lists what is accepted."""
