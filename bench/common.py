"""What the benchmarks share: a synthetic stand-in for training the digits MLP.

The response is smooth and cheap (no training), so a benchmark measures the model and the loop,
not PyTorch: accuracy saturates in width and epochs and drops away from a 1e-2 learning rate;
the parameter count is the MLP's exact one for 8x8 inputs and 10 classes.
"""

from __future__ import annotations

import math
from typing import Any


def response(p: dict[str, Any]) -> dict[str, float]:
    h1, h2 = float(p["hidden_size_1"]), float(p["hidden_size_2"])
    lr_penalty = (math.log10(float(p["learning_rate"])) + 2.0) ** 2
    acc = 0.99 - 0.5 * math.exp(-math.sqrt(h1 * h2) / 12) - 0.05 * lr_penalty - 0.1 / float(p["epochs"])
    acc -= 0.05 * float(p["dropout"]) ** 2
    params = 65 * h1 + h1 * h2 + 11 * h2 + 10
    latency = 0.02 + params / 4000 + 2.0 / float(p.get("batch_size", 32))
    return {"val_acc": acc, "num_params": params, "latency_p99_ms": latency}
