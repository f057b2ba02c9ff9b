"""What datasets there are and how they may be split, known without torch, numpy or the files.

The named datasets' tables (IDX, CIFAR: folders, files, classes, record layout) live here;
the command line validates --dataset and --partition with them before it imports anything
heavy, so a typo is answered at once. agents.data_formats reads the files and
agents.datasets loads the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.errors import DatasetError

PARTITION_FORMS = 'accepted: "iid" or "dirichlet:ALPHA" with ALPHA > 0, e.g. dirichlet:0.5'
IDX_NAMES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte (raw or .gz)")


@dataclass(frozen=True)
class IdxSpec:
    """An IDX dataset: the subfolders it usually sits in, its class names, how to get it."""

    subfolders: tuple[str, ...]
    classes: tuple[str, ...]
    hint: str


@dataclass(frozen=True)
class CifarSpec:
    """A CIFAR binary dataset: its folder, tarball, batch files and record layout."""

    folder: str
    tarball: str
    python_version: tuple[str, str]
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int
    num_classes: int
    names_file: str
    default_classes: tuple[str, ...]


IDX = {
    "fashion-mnist": IdxSpec(
        ("FashionMNIST/raw", "FashionMNIST", "fashion_mnist"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"),
        f"install Debian's package dataset-fashion-mnist or pass --data-dir with {IDX_NAMES}"),
    "mnist": IdxSpec(("MNIST/raw", "MNIST"), tuple("0123456789"),
                     f"pass --data-dir with MNIST's {IDX_NAMES}"),
    "kmnist": IdxSpec(("KMNIST/raw", "KMNIST"),
                      ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                      f"pass --data-dir with KMNIST's MNIST-format {IDX_NAMES}"),
}
CIFAR = {
    "cifar10": CifarSpec(
        "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
        ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 10,
        "batches.meta.txt", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                             "horse", "ship", "truck")),
    "cifar100": CifarSpec(
        "cifar-100-binary", "cifar-100-binary.tar.gz",
        ("cifar-100-python", "cifar-100-python.tar.gz"), ("train.bin",), ("test.bin",), 2, 100,
        "fine_label_names.txt", tuple(str(i) for i in range(100))),
}


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
