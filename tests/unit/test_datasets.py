"""Dataset loading (every on-disk format, written tiny into tmp_path), errors, partitioning."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agents.datasets import (
    Dataset,
    batch_order,
    dataset_names,
    load_dataset,
    parse_partition,
    partition_indices,
)
from agents.errors import DatasetError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory: Path, n_train=12, n_test=6, gz=False, seed=0) -> dict:
    """Write the four IDX files (5x4 images, so height/width mix-ups show) into `directory`."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        path = directory / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
    return arrays


def cifar_records(n: int, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10 if label_bytes == 1 else 100, (n, label_bytes), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes(), labels[:, -1], pixels


def cifar10_files() -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    return {name: cifar_records(2 if i < 5 else 3, 1, i) for i, name in enumerate(names)}


def write_tarball(path: Path, members: dict[str, bytes]) -> None:
    """A gzipped tarball holding `members` under cifar-10-batches-bin/, like the official one."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def save_png(path: Path, mode: str, size=(4, 3), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, color).save(path)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- IDX ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gz_load_as_nchw_uint8(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=gz)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (12, 1, 5, 4) and ds.test_x.shape == (6, 1, 5, 4)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.input_shape == (1, 5, 4) and ds.num_classes == 10 and len(ds.classes) == 10
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_batch_normalizes_to_zero_mean_unit_variance(tmp_path):
    write_idx_set(tmp_path / "kmnist", n_train=40)
    ds = load_dataset("kmnist", str(tmp_path))
    x, y = ds.batch(torch.arange(40))
    assert x.dtype == torch.float32 and x.shape == (40, 1, 5, 4)
    assert y.tolist() == ds.train_y.tolist()
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    xt, yt = ds.batch(torch.tensor([2, 0]), train=False)
    assert torch.equal(xt, ds.to_float(ds.test_x[[2, 0]])) and yt.tolist() == [2, 0]


def test_missing_idx_names_every_path_looked_at(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", str(tmp_path / "nope"))
    message = one_line_error(excinfo)
    for path in (tmp_path / "nope", tmp_path / "nope" / "mnist", tmp_path / "nope/MNIST/raw"):
        assert str(path) in message
    assert "--data-dir" in message


def test_fashion_mnist_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("agents.dataset_files.SYSTEM_FASHION_MNIST", tmp_path / "system")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("fashion-mnist", None)
    message = one_line_error(excinfo)
    assert str(tmp_path / "system") in message and "dataset-fashion-mnist" in message


def test_a_data_dir_asked_for_is_never_replaced_by_the_systems_files(tmp_path):
    """--data-dir /nonexistent used to train on Debian's Fashion-MNIST and exit 0."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("fashion-mnist", str(tmp_path / "mine"))
    message = one_line_error(excinfo)
    assert str(tmp_path / "mine") in message and "/usr/share/datasets" not in message


def test_truncated_gz_names_the_file(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz") as excinfo:
        load_dataset("mnist", str(tmp_path))
    assert "truncated" in one_line_error(excinfo)


def test_bad_magic_names_the_file(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: not an IDX file") as excinfo:
        load_dataset("mnist", str(tmp_path))
    one_line_error(excinfo)


def test_declared_dims_beyond_data_is_an_error(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: IDX header declares"):
        load_dataset("mnist", str(tmp_path))


def test_image_label_count_mismatch_names_both_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DatasetError, match="12 images but .*train-labels-idx1-ubyte holds 11"):
        load_dataset("mnist", str(tmp_path))


def test_partial_idx_directory_names_missing_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetError, match="lacks t10k-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))


def test_unknown_name_lists_accepted_names():
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("imagenet")
    message = one_line_error(excinfo)
    assert all(name in message for name in dataset_names())
    assert "fashion-mnist" in dataset_names() and "folder:PATH" in dataset_names()


# --- CIFAR -------------------------------------------------------------------------------

def test_cifar10_batch_directory(tmp_path):
    files = cifar10_files()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, (data, _, _) in files.items():
        (folder / name).write_bytes(data)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    _, labels, pixels = files["data_batch_2.bin"]
    assert np.array_equal(ds.train_x[2].numpy(), pixels[0].reshape(3, 32, 32))
    assert ds.train_y[2:4].tolist() == labels.tolist()
    assert ds.classes[0] == "airplane" and ds.num_classes == 10


def test_a_device_loads_no_test_set_and_the_same_train_set(tmp_path):
    """test=False (what a device asks for): the test files are neither read nor recorded;
    the train set, its statistics and its order are those of a full load."""
    files = cifar10_files()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, (data, _, _) in files.items():
        (folder / name).write_bytes(data)
    full, shard_side = load_dataset("cifar10", str(tmp_path)), \
        load_dataset("cifar10", str(tmp_path), test=False)
    assert shard_side.test_x.shape == (0, 3, 32, 32) and len(shard_side.test_y) == 0
    assert torch.equal(shard_side.train_x, full.train_x)
    assert torch.equal(shard_side.train_y, full.train_y)
    assert (shard_side.mean, shard_side.std) == (full.mean, full.std)
    assert "test_batch.bin" not in {Path(f["path"]).name for f in shard_side.files}
    (folder / "test_batch.bin").unlink()   # never looked for
    load_dataset("cifar10", str(tmp_path), test=False)
    write_idx_set(tmp_path / "idx")
    ds = load_dataset("mnist", str(tmp_path / "idx"), test=False)
    assert len(ds.test_y) == 0 and ds.test_x.shape[1:] == ds.train_x.shape[1:]
    assert {Path(f["path"]).name.split("-")[0] for f in ds.files} == {"train"}


def test_cifar_images_are_viewed_in_the_read_buffer_not_copied(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, (data, _, _) in cifar10_files().items():
        (folder / name).write_bytes(data)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.stride(0) == 3073   # each image is a view past its label byte
    x, _ = ds.batch(torch.tensor([0, 9]))
    assert x.is_contiguous() and x.shape == (2, 3, 32, 32)


def test_cifar10_tarball_read_without_extracting(tmp_path):
    files = cifar10_files()
    tar_path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    tar_path.parent.mkdir()
    members = {name: data for name, (data, _, _) in files.items()}
    members["batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode()
    write_tarball(tar_path, members)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (10, 3, 32, 32)
    assert ds.test_y.tolist() == files["test_batch.bin"][1].tolist()
    assert ds.classes[3] == "class3"
    assert sorted(p.name for p in tar_path.parent.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_cifar_truncated_tarball_names_it(tmp_path):
    tar_path = tmp_path / "cifar-10-binary.tar.gz"
    write_tarball(tar_path, {name: data for name, (data, _, _) in cifar10_files().items()})
    tar_path.write_bytes(tar_path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz: unreadable or truncated"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar100_uses_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train, fine, pixels = cifar_records(4, 2, 7)
    (folder / "train.bin").write_bytes(train)
    (folder / "test.bin").write_bytes(cifar_records(2, 2, 8)[0])
    ds = load_dataset("cifar100", str(tmp_path))
    assert ds.num_classes == 100 and ds.train_y.tolist() == fine.tolist()
    assert np.array_equal(ds.train_x[3].numpy(), pixels[3].reshape(3, 32, 32))
    assert len(ds.mean) == 3 and ds.input_shape == (3, 32, 32)


def test_cifar_truncated_batch_names_the_file(tmp_path):
    for name, (data, _, _) in cifar10_files().items():
        (tmp_path / name).write_bytes(data[:-5] if name == "test_batch.bin" else data)
    with pytest.raises(DatasetError, match="test_batch.bin: .* not a whole number of 3073-byte"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_missing_mentions_tarball_and_pickle_version(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", str(tmp_path))
    message = one_line_error(excinfo)
    assert str(tmp_path / "cifar-10-batches-bin") in message and "cifar-10-binary.tar.gz" in message
    assert "pickle" in message


# --- image folders -----------------------------------------------------------------------

def test_grayscale_folder_holds_out_a_seeded_sixth(tmp_path):
    for label in ("cat", "dog", "emu"):
        for i in range(6):
            save_png(tmp_path / "pics" / label / f"{i}.png", "L", value=i * 10)
    ds = load_dataset("folder:pics", str(tmp_path))
    assert ds.classes == ("cat", "dog", "emu") and ds.input_shape == (1, 3, 4)
    assert len(ds.train_y) == 15 and sorted(ds.test_y.tolist()) == [0, 1, 2]
    again = load_dataset(f"folder:{tmp_path / 'pics'}")
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.train_y, ds.train_y)


def test_folder_with_any_color_image_is_rgb(tmp_path):
    for i in range(6):
        save_png(tmp_path / "a" / f"{i}.png", "L", value=50)
        save_png(tmp_path / "b" / f"{i}.png", "RGB", value=200)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.input_shape == (3, 3, 4)
    gray = ds.train_x[ds.train_y == 0][0]
    assert gray[:, 0, 0].tolist() == [50, 50, 50]
    assert ds.train_x[ds.train_y == 1][0][:, 0, 0].tolist() == [200, 55, 100]


def test_folder_train_test_subfolders_are_used_as_given(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label in ("x", "y"):
            for i in range(count):
                save_png(tmp_path / split / label / f"{i}.png", "RGB", size=(5, 5))
    (tmp_path / "train" / "x" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}")
    assert len(ds.train_y) == 6 and len(ds.test_y) == 4 and ds.input_shape == (3, 5, 5)


def test_folder_size_mismatch_names_file_and_expected_size(tmp_path):
    for i in range(3):
        save_png(tmp_path / "a" / f"{i}.png", "L")
    save_png(tmp_path / "b" / "big.png", "L", size=(8, 8))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"folder:{tmp_path}")
    message = one_line_error(excinfo)
    assert str(tmp_path / "b" / "big.png") in message and "4x3" in message


def test_folder_with_16_bit_images_is_refused_not_clipped(tmp_path):
    for i in range(6):
        save_png(tmp_path / "a" / f"{i}.png", "L")
    Image.fromarray(np.full((3, 4), 4000, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    with pytest.raises(DatasetError, match="deep.png: I;16 .*convert"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(f"folder:{tmp_path / 'absent'}")


# --- partitioning and batch order --------------------------------------------------------

LABELS = torch.arange(10).repeat_interleave(100)


def label_skew(parts: list[torch.Tensor]) -> float:
    """Mean total-variation distance of each device's label distribution from uniform."""
    dists = [torch.bincount(LABELS[p], minlength=10).double() / len(p) for p in parts]
    return sum(0.5 * (d - 0.1).abs().sum().item() for d in dists) / len(parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.1", "dirichlet:5"])
def test_partition_covers_every_sample_once_deterministically(scheme):
    parts = partition_indices(LABELS, 5, scheme, seed=3)
    assert len(parts) == 5 and all(len(p) > 0 and p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(LABELS)))
    again = partition_indices(LABELS, 5, scheme, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 5, scheme, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_is_even_and_balanced_dirichlet_is_skewed():
    iid = partition_indices(LABELS, 5, "iid", seed=0)
    assert {len(p) for p in iid} == {200}
    assert label_skew(iid) < 0.15
    assert label_skew(partition_indices(LABELS, 5, "dirichlet:0.1", seed=0)) > 0.4


def test_dirichlet_that_cannot_fill_every_device_says_what_to_change():
    with pytest.raises(DatasetError, match="raise alpha or use fewer devices"):
        partition_indices(torch.zeros(30, dtype=torch.int64), 25, "dirichlet:0.01", seed=0)
    with pytest.raises(DatasetError, match="use 1..3 devices"):
        partition_indices(torch.zeros(3, dtype=torch.int64), 4, "iid", seed=0)


def test_parse_partition():
    assert parse_partition("iid") == "iid"
    assert parse_partition(" Dirichlet:0.50 ") == "dirichlet:0.5"
    for bad in ("dirichlet:-1", "dirichlet:x", "dirichlet:", "foo", "dirichlet:inf"):
        with pytest.raises(DatasetError, match='"iid" or "dirichlet:ALPHA"'):
            parse_partition(bad)


def test_batch_order_is_full_batches_seeded_per_round():
    indices = torch.arange(100, 123)
    batches = list(batch_order(indices, 5, seed=1, epoch_or_round=0))
    assert len(batches) == 4 and all(len(b) == 5 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 20 and set(torch.cat(batches).tolist()) < set(
        indices.tolist())
    same = list(batch_order(indices, 5, seed=1, epoch_or_round=0))
    assert all(torch.equal(a, b) for a, b in zip(batches, same, strict=True))
    assert not torch.equal(torch.cat(batches), torch.cat(list(batch_order(indices, 5, 1, 1))))
    assert not torch.equal(torch.cat(batches), torch.cat(list(batch_order(indices, 5, 2, 0))))
    with pytest.raises(DatasetError, match="fewer than the batch size 32"):
        batch_order(indices, 32, seed=1, epoch_or_round=0)


# --- the real thing ----------------------------------------------------------------------

@pytest.mark.skipif(
    not SYSTEM_FMNIST.is_dir(),
    reason=f"{SYSTEM_FMNIST} absent: install Debian's package dataset-fashion-mnist")
def test_real_fashion_mnist():
    start = time.perf_counter()
    ds = load_dataset("fashion-mnist")
    print(f"fashion-mnist loaded in {time.perf_counter() - start:.2f} s")
    assert isinstance(ds, Dataset) and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert abs(ds.mean[0] - 0.2860) < 1e-3 and abs(ds.std[0] - 0.3530) < 1e-3
