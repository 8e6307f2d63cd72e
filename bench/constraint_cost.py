"""Cost of a linear parameter constraint in candidate generation, and the size of the saved state.

The digits search space of examples/digits-mlp-latency.yaml (6 parameters, linear hidden sizes),
2 objectives, N observations from a fixed synthetic response (no training: the model's work is
what is measured). The same data is given to two engines, one with the constraint
hidden_size_2 <= hidden_size_1 and one without, and each generates a batch of 2 candidates.
Also reports the gzip state document (trial table + Ax snapshot) and its encode/decode times.

    .venv/bin/python bench/constraint_cost.py [--observations 30]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

import yaml

from nas_operator.core.loop import restore_engine
from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import Engine
from nas_operator.storage.store import decode, encode

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-mlp-latency.yaml"


def response(p: dict[str, float]) -> dict[str, float]:
    """A smooth stand-in for accuracy and size: saturating in width and epochs, penalised off lr 1e-2."""
    h1, h2 = float(p["hidden_size_1"]), float(p["hidden_size_2"])
    lr_penalty = (math.log10(float(p["learning_rate"])) + 2.0) ** 2
    acc = 0.99 - 0.5 * math.exp(-((h1 * h2) ** 0.5) / 12) - 0.05 * lr_penalty - 0.1 / float(p["epochs"])
    return {"val_acc": acc, "num_params": 65 * h1 + h1 * h2 + 11 * h2 + 10}


def engine_with_data(document: dict[str, Any], observations: int) -> tuple[Engine, LoopState]:
    spec = load_experiment(document, cluster=False).spec
    engine = Engine.create(spec, "bench")
    state = LoopState("bench", "x")
    while len(state.trials) < observations:
        for c in engine.generate(min(4, observations - len(state.trials))):
            metrics = response({k: float(v) for k, v in c.parameters.items()})
            engine.complete(c.index, metrics)
            state.trials[c.index] = TrialRecord(
                c.index, f"bench-t{c.index}", c.parameters, c.generator, status="succeeded", metrics=metrics
            )
    return engine, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=30)
    args = parser.parse_args()
    base = yaml.safe_load(EXAMPLE.read_text())
    base["spec"]["objectives"] = base["spec"]["objectives"][:2]
    base["spec"]["algorithm"] = {"initialTrials": 8, "seed": 1}
    base["spec"]["budget"]["maxTrials"] = 200
    unconstrained = copy.deepcopy(base)
    unconstrained["spec"]["parameterConstraints"] = []

    rows = []
    for label, document in (("with hidden_size_2 <= hidden_size_1", base), ("without the constraint", unconstrained)):
        engine, state = engine_with_data(document, args.observations)
        start = time.perf_counter()
        engine.generate(2)
        rows.append((label, time.perf_counter() - start))
    print(f"generation of 2 candidates at {args.observations} observations (6 parameters, 2 objectives):")
    for label, seconds in rows:
        print(f"  {label:<40} {seconds:6.1f} s")
    print(f"  ratio {rows[0][1] / rows[1][1]:.1f}x")

    snapshot = engine.snapshot()
    start = time.perf_counter()
    blob = encode(state, snapshot)
    encoded = time.perf_counter() - start
    start = time.perf_counter()
    decode(blob)
    decoded = time.perf_counter() - start
    start = time.perf_counter()
    restore_engine(load_experiment(unconstrained, cluster=False).spec, snapshot, state)
    restored = time.perf_counter() - start
    print(
        f"state document for {len(state.trials)} trials: {len(blob) / 1024:.1f} KiB gzip "
        f"({len(blob) / len(state.trials) / 1024:.2f} KiB per trial); encode {encoded:.2f} s, "
        f"decode {decoded:.2f} s, Engine.restore {restored:.2f} s"
    )


if __name__ == "__main__":
    main()
