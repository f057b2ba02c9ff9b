"""Datasets by name: finding them on disk, holding them in memory, splitting them over devices.

Owns the `Dataset` record (uint8 images kept in memory, per-channel mean/std of the training
set, `batch` for the training path), `load_dataset` (the files found by
`agents.dataset_files`), `partition_indices` (IID or Dirichlet
label-skewed split of the training set over devices) and `batch_order` (the deterministic
mini-batch order of one round). The byte formats themselves are read by `agents.data_formats`.

Accepted names: fashion-mnist, mnist, kmnist (IDX files), cifar10, cifar100 (binary version,
batch directory or tarball) and folder:PATH (one subfolder per class; PATH relative to
data_dir when one is given). Only fashion-mnist is found without data_dir, where Debian's
package dataset-fashion-mnist installs it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agents import data_formats as fmt
from agents.dataset_catalog import (  # noqa: F401 - also this module's API
    CIFAR,
    IDX,
    PARTITION_FORMS,
    dataset_names,
    dataset_shape,
    parse_partition,
)
from agents.dataset_files import find_cifar_source, find_idx_files
from agents.errors import DatasetError

FOLDER_HOLDOUT_SEED = 0
FOLDER_TEST_FRACTION = 1 / 6
DIRICHLET_DRAWS = 100


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held as uint8 N x C x H x W tensors with int64 labels.

    `mean` and `std` are per channel on the 0..1 pixel scale, computed from the training set
    when not given; `to_float` and `batch` normalize with them.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    files: tuple[dict, ...] = ()   # what it was read from: path, bytes, sha256 (file_records)
    input_shape: tuple[int, int, int] = field(init=False)
    _scale: torch.Tensor = field(init=False, repr=False)
    _shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_split(self.name, "train", self.train_x, self.train_y, self.num_classes)
        _check_split(self.name, "test", self.test_x, self.test_y, self.num_classes)
        shape = tuple(self.train_x.shape[1:])
        if tuple(self.test_x.shape[1:]) != shape or len(self.train_x) == 0:
            raise DatasetError(f"{self.name}: train images {shape} and test images "
                               f"{tuple(self.test_x.shape[1:])} differ or the train set is empty")
        if self.classes and len(self.classes) != self.num_classes:
            raise DatasetError(f"{self.name}: {len(self.classes)} class names for "
                               f"{self.num_classes} classes")
        mean, std = (self.mean, self.std) if self.mean else channel_stats(self.train_x)
        if not len(mean) == len(std) == shape[0] or min(std) <= 0:
            raise DatasetError(f"{self.name}: mean {mean} and std {std} need one value per "
                               f"channel ({shape[0]}), std > 0")
        scale = torch.tensor([1 / (255 * s) for s in std]).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
        for key, value in [("input_shape", shape), ("mean", tuple(mean)), ("std", tuple(std)),
                           ("_scale", scale), ("_shift", shift)]:
            object.__setattr__(self, key, value)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32, normalized to about zero mean and unit variance."""
        return x.to(torch.float32).mul_(self._scale).add_(self._shift)

    def batch(self, indices: torch.Tensor, train: bool = True):
        """(normalized float32 images, int64 labels) of the samples at `indices`."""
        x, y = (self.train_x, self.train_y) if train else (self.test_x, self.test_y)
        return self.to_float(x.index_select(0, indices)), y.index_select(0, indices)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (0..1 scale) of uint8 images, from pixel histograms."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = float((hist * levels).sum() / hist.sum())
        var = float((hist * levels * levels).sum() / hist.sum()) - mean * mean
        means.append(mean)
        stds.append(math.sqrt(var) if var > 1e-12 else 1.0)  # constant images: no scaling
    return tuple(means), tuple(stds)


def load_dataset(name: str, data_dir: str | None = None, test: bool = True) -> Dataset:
    """Load the named dataset (see the module docstring) into memory. `test=False` leaves
    the test set out (empty, and its files unread): a device trains on its shard only."""
    key = name.strip()
    base = Path(data_dir).expanduser() if data_dir else None
    if key.startswith("folder:"):
        return _load_folder(key, base, test)
    if key in IDX:
        files = find_idx_files(key, base)
        if not test:
            files = {role: path for role, path in files.items() if role.startswith("train")}
        train = fmt.read_idx_pair(files["train-images"], files["train-labels"], 10)
        test_set = fmt.read_idx_pair(files["t10k-images"], files["t10k-labels"], 10) if test \
            else _empty_like(train)
        return _dataset(key, train, test_set, 10, IDX[key].classes, file_records(files.values()))
    if key in CIFAR:
        return _load_cifar(key, base, test)
    raise DatasetError(f'unknown dataset "{name}"; accepted: {", ".join(dataset_names())}')


def _load_cifar(key: str, base: Path | None, test: bool) -> Dataset:
    spec, source = CIFAR[key], find_cifar_source(key, base)
    names = [*spec.train, *(spec.test if test else ())]
    blobs = None if source.is_dir() else \
        fmt.read_cifar_files(source, names, (spec.names_file,))   # one pass over the tarball
    label_names = (blobs.pop(spec.names_file, b"") if blobs is not None
                   else fmt.read_bytes(source / spec.names_file)
                   if (source / spec.names_file).is_file() else b"")
    classes = label_names.decode("utf-8", "replace").split()
    classes = tuple(classes) if len(classes) == spec.num_classes else spec.default_classes
    train = fmt.read_cifar_split(source, spec.train, spec.label_bytes, spec.num_classes, blobs)
    test_set = fmt.read_cifar_split(source, spec.test, spec.label_bytes, spec.num_classes,
                                    blobs) if test else _empty_like(train)
    read = [source] if source.is_file() else \
        [source / n for n in [*names, spec.names_file] if (source / n).is_file()]
    return _dataset(key, train, test_set, spec.num_classes, classes, file_records(read))


def _load_folder(key: str, base: Path | None, test: bool) -> Dataset:
    raw = key[len("folder:"):].strip()
    path = Path(raw).expanduser()
    path = base / path if base and not path.is_absolute() else path
    if not raw or not path.is_dir():
        raise DatasetError(f"{key}: {path if raw else 'no PATH given'} is not a directory; "
                           "folder:PATH needs a directory with one subfolder per class (or "
                           "train/ and test/ holding such subfolders)")
    if (path / "train").is_dir() and (path / "test").is_dir():
        classes, train_files = fmt.list_class_images(path / "train")
        test_classes, test_files = fmt.list_class_images(path / "test")
        if test_classes != classes:
            raise DatasetError(f"{path}: class subfolders of train/ {list(classes)} and test/ "
                               f"{list(test_classes)} differ; give both the same classes")
        mode, size = fmt.image_folder_mode([f for f, _ in [*train_files, *test_files]])
    else:
        classes, files = fmt.list_class_images(path)
        mode, size = fmt.image_folder_mode([f for f, _ in files])
        train_files, test_files = _hold_out(files, path)
    train, test_set = ((fmt.decode_images([f for f, _ in files], mode, size),
                        np.array([label for _, label in files], dtype=np.int64))
                       for files in (train_files, test_files if test else []))   # [] -> empty
    return _dataset(f"folder:{raw}", train, test_set, len(classes), classes,
                    (folder_record(path, [f for f, _ in [*train_files, *test_files]]),))


def _hold_out(files: list[tuple[Path, int]], root: Path):
    """Split (file, label) pairs into train and a seeded, per-class 1/6 test set."""
    rng = np.random.default_rng(FOLDER_HOLDOUT_SEED)
    labels = np.array([label for _, label in files])
    test: set[int] = set()
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.update(members[: int(len(members) * FOLDER_TEST_FRACTION + 0.5)].tolist())
    if not test or len(test) == len(files):
        raise DatasetError(f"{root}: {len(files)} images are too few to hold out a test set; "
                           "add images or split them into train/ and test/ subfolders")
    return ([f for i, f in enumerate(files) if i not in test],
            [f for i, f in enumerate(files) if i in test])


def _empty_like(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A split of no samples, shaped like `split`: the test set a device does not load."""
    x, y = split
    return x[:0], y[:0]


def _dataset(name: str, train, test, num_classes: int, classes: tuple[str, ...],
             files: tuple[dict, ...]) -> Dataset:
    (train_x, train_y), (test_x, test_y) = train, test
    tensors = [torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)]   # no copies
    return Dataset(name, *tensors, num_classes=num_classes, classes=tuple(classes),
                   files=tuple(files))


def dataset_record(ds: Dataset) -> dict:
    """What an agent's ready event says about its data: the name and the files read."""
    return {"name": ds.name, "files": list(ds.files)}


def file_records(paths) -> tuple[dict, ...]:
    """{path, bytes, sha256} of each file a dataset was read from: what a run records, so
    a reader knows which bytes it trained on (the folder asked for, or the system's)."""
    return tuple({"path": str(Path(p).resolve()), "bytes": Path(p).stat().st_size,
                  "sha256": _sha256(Path(p))} for p in paths)


def folder_record(root: Path, files: list[Path]) -> dict:
    """One record for an image folder: its file count, total bytes, and a sha256 over the
    sorted (relative path, file sha256) lines, which changes when any image does."""
    lines = sorted(f"{f.relative_to(root).as_posix()}\0{_sha256(f)}\n" for f in files)
    return {"path": str(root.resolve()), "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_split(name: str, split: str, x: torch.Tensor, y: torch.Tensor, classes: int) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.dim() != 1:
        raise DatasetError(f"{name}: {split} images must be uint8 N x C x H x W and labels int64 "
                           f"N, got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y) or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < classes):
        raise DatasetError(f"{name}: {split} has {len(x)} images and {len(y)} labels, labels "
                           f"must be in 0..{classes - 1} and one per image")


def partition_indices(labels: torch.Tensor, num_devices: int, scheme: str,
                      seed: int) -> list[torch.Tensor]:
    """Split sample indices over devices: every sample to exactly one, none left empty.

    iid: a seeded shuffle cut into near-equal parts. dirichlet:ALPHA: per class, device shares
    drawn from Dirichlet(ALPHA) (smaller ALPHA = more label skew), redrawn from the same seeded
    stream while some device would get nothing. Each device's indices are sorted.
    """
    scheme, y = parse_partition(scheme), labels.cpu().numpy().reshape(-1)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(y):
        raise DatasetError(f"cannot split {len(y)} samples over {num_devices} devices; "
                           f"use 1..{len(y)} devices")
    rng = _rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(y)), num_devices)
    else:
        parts = _dirichlet_parts(y, num_devices, float(scheme.split(":")[1]), rng)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def _dirichlet_parts(y: np.ndarray, devices: int, alpha: float, rng: np.random.Generator):
    for _ in range(DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(devices)]
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * devices))[:-1] * len(members)).astype(int)
            for device, chunk in enumerate(np.split(members, cuts)):
                parts[device].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) > 0:
            return merged
    raise DatasetError(f"dirichlet:{alpha:g} left a device with no samples in "
                       f"{DIRICHLET_DRAWS} draws over {devices} devices; raise alpha or use "
                       "fewer devices")


def batch_order(indices: torch.Tensor, batch_size: int, seed: int,
                epoch_or_round: int) -> Iterator[torch.Tensor]:
    """Full mini-batches of `indices` (last partial batch dropped), shuffled by (seed, round).

    The order depends only on these arguments, so every strategy run with the same config
    sees the same data in the same order. Raises when not even one batch fits.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch size must be a positive integer, got {batch_size!r}")
    if len(indices) < batch_size:
        raise DatasetError(f"a device holds {len(indices)} samples, fewer than the batch size "
                           f"{batch_size}; use a smaller batch size or fewer devices")
    perm = torch.from_numpy(_rng(seed, epoch_or_round).permutation(len(indices)))
    shuffled = indices.reshape(-1)[perm]
    return (shuffled[i:i + batch_size]
            for i in range(0, len(shuffled) - batch_size + 1, batch_size))


def _rng(seed: int, *more: int) -> np.random.Generator:
    values = [seed, *more]
    if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
        raise DatasetError(f"seeds and round numbers must be non-negative integers, got {values}")
    return np.random.default_rng([int(v) for v in values])
