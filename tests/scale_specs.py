"""NASExperiments for the operator's scale tests: two objectives, trials that only sleep and report (quick_trial.py).

The parameters are u and v (not x and y: YAML 1.1, as kubectl reads it, takes y for true). The image is a
placeholder the test node agent ignores; the command is this checkout's Python and trial script.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

QUICK_TRIAL = Path(__file__).resolve().parent / "quick_trial.py"


def quick_experiment(
    name: str,
    *,
    max_trials: int = 3,
    parallelism: int = 1,
    initial_trials: int = 1,
    seconds: float = 1.0,
    seed: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "metadata": {"name": name},
        "spec": {
            "parameters": [
                {"name": "u", "type": "range", "valueType": "float", "lower": 0.0, "upper": 1.0},
                {"name": "v", "type": "range", "valueType": "float", "lower": 0.0, "upper": 1.0},
            ],
            "objectives": [
                {"metric": "val_acc", "goal": "maximize", "threshold": 0.4},
                {"metric": "num_params", "goal": "minimize", "threshold": 1200},
            ],
            "metrics": {"source": "terminationMessage"},
            "budget": {"maxTrials": max_trials, "parallelism": parallelism},
            "algorithm": {"name": "auto", "initialTrials": initial_trials, "seed": seed},
            "trial": {
                "image": "ghcr.io/nas-operator/quick-trial:test",
                "command": [sys.executable, str(QUICK_TRIAL)],
                "args": ["--x={u}", "--y={v}", f"--seconds={seconds:g}"],
                "resources": {"cpu": "100m", "memory": "64Mi"},
            },
        },
    }
