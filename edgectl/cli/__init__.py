"""The `edgectl` command line: thin command modules, one per command group.

The top layer of the coordinator: commands parse options, call one core function of the
layers below (runs, planning, network, fleet) and render its result with `views`.
"""

from edgectl.cli.app import app, main

__all__ = ["app", "main"]
