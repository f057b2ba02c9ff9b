"""Where the files of each named dataset are looked for, and what the user is told when they
are not there: path checks only, no numpy or torch, so the coordinator can check a local
fleet's data before it starts any agent (edgectl.runs.options.check_local_dataset) and an
agent before it announces itself (agents.server).
"""

from __future__ import annotations

from pathlib import Path

from agents.dataset_catalog import CIFAR, IDX, dataset_names
from agents.errors import DatasetError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_ROLES = {"train-images": "idx3", "train-labels": "idx1", "t10k-images": "idx3",
             "t10k-labels": "idx1"}


def check_dataset(name: str, data_dir: str | None = None) -> None:
    """Raise the DatasetError `load_dataset` would for a dataset that is not there, without
    reading it: an agent checks before it announces itself, then loads in the background."""
    key = name.strip()
    base = Path(data_dir).expanduser() if data_dir else None
    if key in IDX:
        find_idx_files(key, base)
    elif key in CIFAR:
        find_cifar_source(key, base)
    elif not key.startswith("folder:"):
        raise DatasetError(f'unknown dataset "{name}"; accepted: {", ".join(dataset_names())}')


def find_idx_files(key: str, base: Path | None) -> dict[str, Path]:
    """The four IDX files of dataset `key` (by role, e.g. "train-images") in the first
    directory that has them: base, base/key and base's usual subfolders when a data folder
    is given (never anything else: a folder asked for is the folder used), else the
    system's."""
    spec = IDX[key]
    dirs = ([base, base / key, *(base / s for s in spec.subfolders)] if base is not None
            else [SYSTEM_FASHION_MNIST] if key == "fashion-mnist" else [])
    dirs = list(dict.fromkeys(dirs))
    for directory in dirs:
        found = {role: _idx_file(directory, role) for role in IDX_ROLES}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if any(found.values()):
            missing = [f"{r}-{k}-ubyte" for r, k in IDX_ROLES.items() if not found[r]]
            raise DatasetError(f"{key}: {directory} lacks {', '.join(missing)}; {spec.hint}")
    raise _not_found(key, dirs, spec.hint)


def _idx_file(directory: Path, role: str) -> Path | None:
    kind = IDX_ROLES[role]
    for stem in (f"{role}-{kind}-ubyte", f"{role}.{kind}-ubyte"):
        for path in (directory / stem, directory / f"{stem}.gz"):
            if path.is_file():
                return path
    return None


def find_cifar_source(key: str, base: Path | None) -> Path:
    """The batch directory or tarball of CIFAR dataset `key` under base or base/key."""
    spec = CIFAR[key]
    hint = (f"pass --data-dir with {spec.tarball} or its extracted {spec.folder}/ (the binary "
            "version from https://www.cs.toronto.edu/~kriz/cifar.html)")
    if base is not None and base.is_file():
        return base
    looked: list[Path] = []
    for root in [] if base is None else [base, base / key]:
        for candidate in (root, root / spec.folder, root / spec.tarball):
            looked.append(candidate)
            if candidate.is_file() or (candidate / spec.train[0]).is_file():
                return candidate
        pickled = [root / p for p in spec.python_version if (root / p).exists()]
        if pickled:
            hint = (f"{pickled[0]} is the Python (pickle) version, which is not read; {hint}")
    raise _not_found(key, looked, hint)


def _not_found(key: str, looked: list[Path], hint: str) -> DatasetError:
    if not looked:
        return DatasetError(f"{key} needs a data directory: {hint}")
    return DatasetError(f"{key} not found: looked in {', '.join(map(str, looked))}; {hint}")
