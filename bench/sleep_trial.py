"""A stand-in trial for the orchestration benchmarks: sleeps a known time, then logs metrics.

The metrics are a smooth synthetic response of the digits MLP parameters (accuracy saturating
in width and epochs, the exact parameter count), written as real TensorBoard event files with
TensorBoard's own writer (no torch import, so process start-up stays small and equal for every
contender). The process records its own start and end wall times in `<log-dir>/times.json`:
slot idle time is measured from the trial's side, not from any orchestrator's bookkeeping.

    python bench/sleep_trial.py --seconds 10 --log-dir DIR --hidden-size-1 32 --hidden-size-2 16 ...
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def response(h1: float, h2: float, learning_rate: float, epochs: float, dropout: float) -> dict[str, float]:
    lr_penalty = (math.log10(learning_rate) + 2.0) ** 2
    acc = 0.99 - 0.5 * math.exp(-math.sqrt(h1 * h2) / 12) - 0.05 * lr_penalty - 0.1 / epochs - 0.05 * dropout**2
    return {"val_acc": acc, "num_params": 65 * h1 + h1 * h2 + 11 * h2 + 10}


def write_scalars(log_dir: Path, metrics: dict[str, float]) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(log_dir))
    for tag, value in metrics.items():
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--hidden-size-1", type=float, required=True)
    parser.add_argument("--hidden-size-2", type=float, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--epochs", type=float, required=True)
    parser.add_argument("--dropout", type=float, required=True)
    parser.add_argument("--batch-size", type=float, default=32)
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    time.sleep(args.seconds)
    metrics = response(args.hidden_size_1, args.hidden_size_2, args.learning_rate, args.epochs, args.dropout)
    write_scalars(args.log_dir, metrics)
    (args.log_dir / "times.json").write_text(json.dumps({"start": started, "end": time.time()}))


if __name__ == "__main__":
    main()
