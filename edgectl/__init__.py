"""edgectl: the coordinator of an edge testbed (CLI, inventory, fleet, orchestration, records)."""

__version__ = "0.1.0"
