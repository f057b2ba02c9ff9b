"""Readers for the dataset file formats users keep on disk, returning uint8 arrays.

Owns the byte-level parsing of three formats, each checked as it is read so that a
truncated or foreign file is a one-line `DatasetError` naming the file:

- IDX (MNIST, Fashion-MNIST, KMNIST), raw or gzip-compressed: header = two zero bytes,
  a dtype code, the number of dimensions, then one big-endian uint32 per dimension.
- CIFAR-10 / CIFAR-100 binary version, from the batch directory or the official tarball
  (read with `tarfile` in memory, never extracted): fixed-size records of label byte(s)
  followed by 3072 pixel bytes in channel-major order.
- An image folder with one subfolder per class, decoded with Pillow.

Every reader returns images as uint8 arrays shaped N x C x H x W and labels as int64.
Where each named dataset's files are looked for is `agents.dataset_files`; assembling a
`Dataset` from them belongs to `agents.datasets`.
"""

from __future__ import annotations

import gzip
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.errors import DatasetError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_PIXELS = 3 * 32 * 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm"}
GRAY_MODES = {"1", "L", "LA"}
def read_bytes(path: Path) -> bytes:
    """The content of `path`, gunzipped when it starts with the gzip magic."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable or truncated ({exc}); download it again") from exc


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or .gz) into an array of its declared dtype and dims."""
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic {data[:4].hex() or 'empty'}); "
                           "expected e.g. train-images-idx3-ubyte from MNIST or Fashion-MNIST")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated; download the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path}: IDX header declares dims {dims} ({expected} data bytes) but "
                           f"the file holds {len(data) - header}; download the file again")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a native-order, writable copy


def read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 1 x H x W uint8) and labels (N int64) from two matching IDX files."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{images}: expected 3-D unsigned-byte images, got {x.ndim}-D {x.dtype}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(f"{labels}: expected 1-D integer labels, got {y.ndim}-D {y.dtype}")
    if len(x) != len(y):
        raise DatasetError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
                           "the files come from different downloads")
    return x[:, None], _checked_labels(y.astype(np.int64), num_classes, labels)


def parse_cifar(data: bytearray, label_bytes: int, num_classes: int, source: str):
    """Images (N x 3 x 32 x 32 uint8) and labels from CIFAR binary records; last label byte.
    The images are a view into `data` (strided past the label bytes), never a copy."""
    _check_records(len(data), label_bytes, source)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, label_bytes + CIFAR_PIXELS)
    x = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    y = rows[:, label_bytes - 1].astype(np.int64)
    return x, _checked_labels(y, num_classes, source)


def _check_records(size: int, label_bytes: int, source: str) -> None:
    record = label_bytes + CIFAR_PIXELS
    if not size or size % record:
        raise DatasetError(f"{source}: {size} bytes is not a whole number of {record}-byte "
                           "CIFAR records; the file is truncated or from another dataset")


def read_cifar_split(source: Path, names: Sequence[str], label_bytes: int, num_classes: int,
                     blobs: dict | None = None):
    """Images and labels of the CIFAR files `names` (one split, train or test) of a batch
    directory, or of a tarball's members already read (`blobs`, from read_cifar_files, which
    this empties), in ONE buffer and viewed in place (parse_cifar): CIFAR-10's 150 MB of
    training images cost one read, not the copies that parsing each file and joining them
    took (2 s on a 2-core host)."""
    if blobs is None:
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DatasetError(f"{source}: missing {', '.join(missing)}; copy the complete "
                               "CIFAR binary version there")
    sizes = [len(blobs[n]) if blobs else (source / n).stat().st_size for n in names]
    for name, size in zip(names, sizes, strict=True):
        _check_records(size, label_bytes, f"{source}:{name}")
    data = bytearray(sum(sizes))
    view, at = memoryview(data), 0
    for name, size in zip(names, sizes, strict=True):
        if blobs:
            view[at:at + size] = blobs.pop(name)
        else:
            _read_into(source / name, view[at:at + size])
        at += size
    return parse_cifar(data, label_bytes, num_classes, f"{source}:{','.join(names)}")


def _read_into(path: Path, view: memoryview) -> None:
    """Fill `view` with the file's bytes (the file's size was taken just before)."""
    got = 0
    try:
        with open(path, "rb") as f:
            while got < len(view) and (n := f.readinto(view[got:])):
                got += n
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); download it again") from exc
    if got != len(view):
        raise DatasetError(f"{path}: changed while it was read; read it again")


def read_cifar_files(source: Path, names: list[str], optional: tuple[str, ...] = ()):
    """The bytes of each file in `names` (and of those in `optional` that exist), by basename,
    from a batch directory or a tarball."""
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DatasetError(f"{source}: missing {', '.join(missing)}; copy the complete "
                               "CIFAR binary version there")
        present = [n for n in optional if (source / n).is_file()]
        return {n: read_bytes(source / n) for n in [*names, *present]}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and (base in names or base in optional):
                    found[base] = tar.extractfile(member).read()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise DatasetError(f"{source}: unreadable or truncated tarball ({exc}); "
                           "download it again") from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{source}: tarball lacks {', '.join(missing)}; expected the CIFAR "
                           "binary version (cifar-10-binary.tar.gz or cifar-100-binary.tar.gz)")
    return found


def list_class_images(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class names (sorted subfolders of `root`) and every (image file, class index)."""
    classes = tuple(sorted(d.name for d in root.iterdir()
                           if d.is_dir() and not d.name.startswith(".")))
    files = [(f, label) for label, name in enumerate(classes)
             for f in sorted((root / name).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")]
    if not files:
        raise DatasetError(f"{root}: no images found; expected one subfolder per class holding "
                           f"image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, files


def image_folder_mode(files: list[Path]) -> tuple[str, tuple[int, int]]:
    """Pillow mode for the folder ('L' if every image is grayscale, else 'RGB') and its size."""
    from PIL import Image, UnidentifiedImageError  # only image folders need Pillow

    expected: tuple[int, int] | None = None
    gray = True
    for path in files:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc}); remove it") from exc
        if expected is None:
            expected = size
        elif size != expected:
            raise DatasetError(f"{path}: image is {size[0]}x{size[1]} but the folder's images are "
                               f"{expected[0]}x{expected[1]} (from {files[0]}); resize it")
        if mode.startswith(("I", "F")):  # Pillow would clip these to 0..255, not scale them
            raise DatasetError(f"{path}: {mode} (16/32-bit) image; convert the folder's images "
                               "to 8 bits per channel")
        gray = gray and mode in GRAY_MODES
    assert expected is not None
    return ("L" if gray else "RGB"), expected


def decode_images(files: list[Path], mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode `files` into one N x C x H x W uint8 array in Pillow `mode`."""
    from PIL import Image, UnidentifiedImageError  # only image folders need Pillow

    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"{path}: image cannot be decoded ({exc}); remove it") from exc
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def _checked_labels(y: np.ndarray, num_classes: int, source: object) -> np.ndarray:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{source}: labels span {y.min()}..{y.max()}, expected "
                           f"0..{num_classes - 1}; the file is corrupt or from another dataset")
    return y
