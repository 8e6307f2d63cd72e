"""Datasets the reference trainer can use offline.

scikit-learn's digits (8x8 images, 1,797 samples) ships inside the package, so a search runs
with no network at all. MNIST is used only when its IDX files are already on disk: nothing
here downloads.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Split:
    """Train/validation arrays: float32 features in [0, 1], int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def load_digits_split(val_fraction: float = 0.2, seed: int = 0) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = round(len(y) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train], x[val], y[val], num_classes=10)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_mnist(data_dir: Path) -> dict[str, Path] | None:
    """The four MNIST IDX files (plain or .gz) under data_dir or data_dir/MNIST/raw, if all exist."""
    for base in (data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"):
        found = {}
        for key, stem in MNIST_FILES.items():
            for candidate in (base / stem, base / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def load_mnist_split(data_dir: Path) -> Split:
    files = find_mnist(data_dir)
    if files is None:
        raise FileNotFoundError(f"MNIST IDX files not found under {data_dir} (this trainer never downloads)")
    x_train = _read_idx(files["train_images"]).reshape(-1, 28 * 28).astype(np.float32) / 255.0
    x_val = _read_idx(files["test_images"]).reshape(-1, 28 * 28).astype(np.float32) / 255.0
    return Split(
        x_train,
        _read_idx(files["train_labels"]).astype(np.int64),
        x_val,
        _read_idx(files["test_labels"]).astype(np.int64),
        num_classes=10,
    )


def load_split(dataset: str, data_dir: Path) -> Split:
    """`auto` takes MNIST when present locally, else digits."""
    if dataset == "digits":
        return load_digits_split()
    if dataset == "mnist":
        return load_mnist_split(data_dir)
    if dataset == "auto":
        return load_mnist_split(data_dir) if find_mnist(data_dir) else load_digits_split()
    raise ValueError(f"unknown dataset {dataset!r} (digits, mnist or auto)")
