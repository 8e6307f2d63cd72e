"""A trial that costs the cluster nothing: it sleeps, then reports two objectives in its termination message.

For the operator's scale tests, where the load must be the operator's, not the trainers': no torch, no files, the
metrics a closed form of the two parameters (accuracy rising with x, size rising with y), so the front is known.

    python tests/quick_trial.py --x 0.3 --y 0.7 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--x", type=float, required=True)
    parser.add_argument("--y", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    time.sleep(args.seconds)
    metrics = {"val_acc": 0.5 + 0.4 * args.x - 0.1 * (args.y - 0.5) ** 2, "num_params": 1000.0 * (0.1 + args.y)}
    path = os.environ.get("NAS_TERMINATION_MESSAGE_PATH")
    if path:
        with open(path, "w") as out:
            json.dump(metrics, out)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
