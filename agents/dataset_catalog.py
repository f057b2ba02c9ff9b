"""What datasets there are and how they may be split, known without torch or the files.

The command line validates --dataset and --partition with this before it imports torch,
so a typo is answered at once; agents.datasets loads the data.
"""

from __future__ import annotations

import math

from agents.data_formats import CIFAR, IDX
from agents.errors import DatasetError

PARTITION_FORMS = 'accepted: "iid" or "dirichlet:ALPHA" with ALPHA > 0, e.g. dirichlet:0.5'


def dataset_shape(name: str) -> tuple[tuple[int, int, int], int] | None:
    """(input shape, class count) of a named dataset without reading it; None for folders,
    whose shape only their files tell."""
    if name in IDX:
        return (1, 28, 28), len(IDX[name].classes)
    if name in CIFAR:
        return (3, 32, 32), CIFAR[name].num_classes
    return None


def dataset_names() -> list[str]:
    """The accepted dataset names, as a user types them."""
    return [*IDX, *CIFAR, "folder:PATH"]


def parse_partition(text: str) -> str:
    """Validate a partition scheme; returns it normalized ("iid" or "dirichlet:ALPHA")."""
    scheme = text.strip().lower()
    if scheme == "iid":
        return scheme
    kind, _, value = scheme.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = math.nan
    if kind != "dirichlet" or not (math.isfinite(alpha) and alpha > 0):
        raise DatasetError(f'partition "{text}" is not valid; {PARTITION_FORMS}')
    return f"dirichlet:{alpha:g}"
