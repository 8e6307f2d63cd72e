"""The reference trainer's datasets: digits is bundled; MNIST is read from local IDX files only."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from nas_trainer.data import MNIST_FILES, find_mnist, load_digits_split, load_split


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_is_read_from_local_idx_files(tmp_path: Path, compress: bool) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = {"train_images": (6, 28, 28), "train_labels": (6,), "test_images": (3, 28, 28), "test_labels": (3,)}
    for key, shape in shapes.items():
        _write_idx(raw / MNIST_FILES[key], rng.integers(0, 10 if "labels" in key else 256, shape), compress)
    split = load_split("auto", tmp_path)
    assert split.x_train.shape == (6, 784) and split.x_val.shape == (3, 784)
    assert split.x_train.max() <= 1.0 and split.y_train.dtype == np.int64


def test_auto_falls_back_to_digits_and_mnist_never_downloads(tmp_path: Path) -> None:
    assert find_mnist(tmp_path) is None
    split = load_split("auto", tmp_path)
    assert split.num_features == 64 and len(split.y_train) + len(split.y_val) == 1797
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_split("mnist", tmp_path)


def test_digits_split_is_deterministic_and_disjoint() -> None:
    a, b = load_digits_split(), load_digits_split()
    assert np.array_equal(a.y_val, b.y_val)
    assert len(a.y_val) == 359
