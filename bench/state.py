"""Experiment state: save time, stored size and restore time vs the number of trials, ours vs Ax's JSON snapshot.

One experiment over the digits MLP space (6 tunable parameters, a fixed one, 2 objectives and an
outcome constraint) with N finished trials: Sobol candidates, so that building 1,000 trials takes no
model fit, with the record a real run keeps for each (parameters, metrics, timestamps, a Kubernetes
handle; every 10th trial failed with a reason). Both documents go through the stores' own encoder
(JSON, gzip), so the sizes are what the ConfigMap store would write:

- ours: the trial table plus the engine's snapshot (the generation strategy's position and each
  node's generator state, a few hundred bytes); restore = decode + rebuild the Ax experiment from
  the table (core/loop.restore_engine);
- Ax: the trial table plus Ax's whole JSON snapshot (`Client._to_json_snapshot`, what this project
  stored until #12); restore = decode + Ax's decoder + reconciling with the table.

The ConfigMap store refuses a compressed state over CONFIGMAP_STATE_LIMIT (~756 KiB): the table says
which documents fit. Every (N, kind) point runs once; the restore is checked to give the same trial
statuses as the engine that was saved.

    .venv/bin/python bench/state.py                 # N = 100, 300, 1000
    .venv/bin/python bench/state.py --trials 2000   # any list
    .venv/bin/python bench/state.py --quick         # N = 40
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import response
from nas_operator.core.loop import restore_engine
from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint, trial_name
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import LEGACY_SNAPSHOT_FORMAT, Engine
from nas_operator.storage.store import CONFIGMAP_STATE_LIMIT, decode, encode

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-mlp.yaml"
HEADER = (
    "| trials | state | save (encode + gzip) | stored size | fits a ConfigMap | restore "
    "| Ax/ours: save, size, restore |"
)


def experiment_spec(trials: int) -> NASExperimentSpec:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["budget"]["maxTrials"] = max(trials, 1)
    document["spec"]["algorithm"] = {"name": "sobol", "seed": 0}
    return load_experiment(document, cluster=False).spec


def build(spec: NASExperimentSpec, trials: int) -> tuple[Engine, LoopState]:
    """N finished trials, in batches of 20 as a loop would ask for them, with a realistic table row each."""
    engine = Engine.create(spec, "bench")
    state = LoopState("bench", spec_fingerprint(spec), uid="2b7a6c8e-1d1f-4c55-9a57-0c2f0e3c1b11")
    clock = 1.79e9
    while len(state.trials) < trials:
        for c in engine.generate(min(20, trials - len(state.trials))):
            name = trial_name("bench", c.index)
            record = TrialRecord(
                index=c.index,
                name=name,
                parameters=c.parameters,
                generator=c.generator,
                created_at=clock,
                started_at=clock + 2.5,
                finished_at=clock + 95.0,
                handle={"job": name, "uid": f"0c2f0e3c-{c.index:04d}-4c55-9a57-2b7a6c8e1d1f", "attempt": 0},
            )
            if c.index % 10 == 9:
                record.status, record.reason = "failed", "exit code 1: RuntimeError: CUDA out of memory (last lines...)"
                engine.fail(c.index, record.reason)
            else:
                metrics = {**response(c.parameters), "latency_p99_ms": 1.0 + (c.index % 7) / 10}
                record.status, record.metrics = "succeeded", metrics
                engine.complete(c.index, metrics)
            state.trials[c.index] = record
            clock += 30.0
    state.phase, state.reason = "Running", "TrialsRunning"
    return engine, state


def measure(spec: NASExperimentSpec, engine: Engine, state: LoopState, kind: str) -> dict[str, Any]:
    start = time.perf_counter()
    if kind == "ours":
        snapshot = engine.snapshot()
    else:
        snapshot = {"format": LEGACY_SNAPSHOT_FORMAT, "client": engine.client._to_json_snapshot()}
    blob = encode(state, snapshot)
    saved = time.perf_counter() - start
    start = time.perf_counter()
    stored = decode(blob)
    restored = restore_engine(spec, copy.deepcopy(stored.engine), stored.state)
    restore_seconds = time.perf_counter() - start
    if restored.trial_statuses() != engine.trial_statuses():
        raise AssertionError(f"{kind}: the restored engine's trials differ from the saved one's")
    return {"save": saved, "size": len(blob), "restore": restore_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100,300,1000", help="comma-separated trial counts")
    parser.add_argument("--quick", action="store_true", help="40 trials")
    args = parser.parse_args()
    counts = [40] if args.quick else [int(x) for x in args.trials.split(",")]
    print(f"ConfigMap store limit: {CONFIGMAP_STATE_LIMIT / 1024:.0f} KiB compressed\n")
    print(HEADER)
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        spec = experiment_spec(n)
        started = time.perf_counter()
        engine, state = build(spec, n)
        print(f"   ({n} trials built in {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        rows = {kind: measure(spec, engine, state, kind) for kind in ("ours", "ax")}
        ours, ax = rows["ours"], rows["ax"]
        for kind, label in (("ours", "ours: table + engine position"), ("ax", "Ax's JSON snapshot + table")):
            r = rows[kind]
            ratio = ""
            if kind == "ax":
                ratio = f"{ax['save'] / ours['save']:.0f}x, {ax['size'] / ours['size']:.1f}x, "
                ratio += f"{ax['restore'] / ours['restore']:.1f}x"
            fits = "yes" if r["size"] <= CONFIGMAP_STATE_LIMIT else "no"
            print(
                f"| {n} | {label} | {r['save'] * 1000:.0f} ms | {r['size'] / 1024:.0f} KiB | {fits} "
                f"| {r['restore']:.2f} s | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
