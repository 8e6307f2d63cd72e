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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import response


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
    metrics = response(vars(args))
    write_scalars(args.log_dir, metrics)
    (args.log_dir / "times.json").write_text(json.dumps({"start": started, "end": time.time()}))


if __name__ == "__main__":
    main()
