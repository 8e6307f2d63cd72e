"""A trial program for the early-stopping tests: a known learning curve, logged epoch by epoch with torch's writer.

The final accuracy and the parameter count are functions of the parameters (x: accuracy, y: size), so which trials a
correct rule may stop is known; every epoch takes a fixed time, so a stopped trial's event file is visibly shorter.

    python tests/curve_trial.py --x 0.3 --y 0.7 --epochs 12 --seconds-per-epoch 0.3 --log-dir DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def accuracy(x: float, epoch: int) -> float:
    """Saturating in the epochs towards 0.5 + 0.4 x."""
    return (0.5 + 0.4 * x) * (1.0 - 0.6 * 0.7**epoch)


def size(y: float) -> float:
    return round(1000.0 * (0.1 + y))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--x", type=float, required=True)
    parser.add_argument("--y", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seconds-per-epoch", type=float, default=0.3)
    parser.add_argument("--log-dir", type=Path, required=True)
    args = parser.parse_args()

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(args.log_dir), flush_secs=3600)
    writer.add_scalar("params", size(args.y), global_step=0)  # known before any training
    writer.add_scalar("epoch", 0.0, global_step=0)
    writer.flush()
    for epoch in range(args.epochs):
        time.sleep(args.seconds_per_epoch)
        step = 10 * (epoch + 1)
        writer.add_scalar("epoch", float(epoch), global_step=step)
        writer.add_scalar("acc", accuracy(args.x, epoch), global_step=step)
        writer.flush()
    writer.close()


if __name__ == "__main__":
    main()
