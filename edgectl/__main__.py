"""`python -m edgectl` runs the CLI, for environments where the console script is not on PATH."""

from edgectl.cli import main

main()
