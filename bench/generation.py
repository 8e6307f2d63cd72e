"""Candidate-generation latency and peak memory vs observations, objectives and batch size: ours vs Ax's defaults.

The 6-parameter digits MLP space (log-scale ints, a float, an ordered choice: the mixed space a
NAS user has), with N - batch completed observations from a smooth synthetic response (Ax's own
initialization trials, so no model fit is needed to get there). Then two model-based
`generate(batch)` calls, as a running loop makes them: the first fits the model cold on N - batch
observations; its candidates are completed, and the second, timed one, runs on N observations.
Both contenders drive the same Ax Client and generation strategy (center, Sobol, then Ax's model
node: a GP per outcome, qLogNEHVI, the mixed optimizer); they differ only in the model node's
configuration (search/engine.py, ModelSettings):

- ours: the engine's defaults (GP hyperparameters warm-started from the previous fit; past 256
  observations the GP and qLogNEHVI's baseline on a training subset, search/training_subset.py);
- Ax defaults: Ax's own configuration (cold fits on every observation, 20 restarts from 1024 raw samples).

"HV gain" is what the two model batches added to the hypervolume of the Sobol history (the true
synthetic response, thresholds as the example's): a one-step look at their quality, where a whole
model-based run to N observations would take hours. Every (point, contender) runs in a fresh
process, so its peak resident memory (ru_maxrss) is its own: the table shows the growth over the
process's size before the first model call. A point that runs past --timeout is reported as such.

    .venv/bin/python bench/generation.py          # N in 10..300, 2 and 3 objectives, batch 1 and 4
    .venv/bin/python bench/generation.py --quick  # N in 10, 25; 2 objectives
    .venv/bin/python bench/generation.py --observations 1000,2000 --objectives 2 --batches 4  # Vertex scale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import response

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-mlp.yaml"


def spec_document(objectives: int, observations: int, seed: int = 0) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    spec = document["spec"]
    if objectives == 3:
        spec["objectives"].append({"metric": "latency_p99_ms", "goal": "minimize", "threshold": 5.0})
    spec["budget"]["maxTrials"] = max(1000, observations + 100)
    # The observations are Ax's own initialization (center + Sobol: no model fit to get there),
    # so the timed call is the first model-based one, with exactly that much data.
    spec["algorithm"] = {"name": "auto", "initialTrials": observations, "seed": seed}
    return dict(document)


CONTENDERS = ("ours", "Ax defaults")


def hypervolume(spec: Any, results: list[dict[str, float]]) -> float:
    """The hypervolume the results dominate beyond the objectives' thresholds (all maximized)."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    signs = [1.0 if o.goal == "maximize" else -1.0 for o in spec.objectives]
    reference = torch.tensor([s * float(o.threshold) for s, o in zip(signs, spec.objectives, strict=True)])
    points = torch.tensor([[s * r[o.metric] for s, o in zip(signs, spec.objectives, strict=True)] for r in results])
    points = points[(points > reference).all(dim=-1)]
    if not len(points):
        return 0.0
    return float(Hypervolume(reference).compute(points[is_non_dominated(points)]))


def measure_point(observations: int, objectives: int, batch: int, contender: str, seed: int = 0) -> dict[str, Any]:
    """In this process: N - batch initial trials, a cold model call, then the timed one at N observations.

    Also what the two model batches added to the hypervolume of the Sobol history (the true response, not the
    model's), a one-step measure of their quality where a whole run to N would take hours.
    """
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import AX_DEFAULT_MODEL, Engine, ModelSettings

    initial = observations - batch
    spec = load_experiment(spec_document(objectives, initial, seed), cluster=False).spec
    engine = Engine.create(spec, "bench", model=ModelSettings() if contender == "ours" else AX_DEFAULT_MODEL)
    results: list[dict[str, float]] = []
    while sum(1 for s in engine.trial_statuses().values() if s == "COMPLETED") < initial:
        for candidate in engine.generate(initial - len(engine.trial_statuses())):
            results.append(response(candidate.parameters))
            engine.complete(candidate.index, results[-1])
    history = hypervolume(spec, results)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    first = engine.generate(batch)
    first_seconds = time.perf_counter() - start
    for candidate in first:
        results.append(response(candidate.parameters))
        engine.complete(candidate.index, results[-1])
    start = time.perf_counter()
    candidates = engine.generate(batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results += [response(c.parameters) for c in candidates]
    return {
        "seconds": seconds,
        "first_seconds": first_seconds,
        "rss_before_mib": before / 1024,
        "growth_mib": (peak - before) / 1024,
        "candidates": len(candidates),
        "generators": sorted({c.generator for c in first + candidates}),
        "hv_gain_percent": 100.0 * (hypervolume(spec, results) - history) / history if history else float("nan"),
    }


def run_point(
    observations: int, objectives: int, batch: int, contender: str, timeout: float, seed: int = 0
) -> dict[str, Any]:
    point = f"{observations},{objectives},{batch},{seed}"
    command = [sys.executable, __file__, "--point", point, "--contender", contender]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def cell(point: dict[str, Any], batch: int, timeout: float) -> str:
    if point.get("timeout"):
        return f"> {timeout:.0f} s (stopped)"
    if "error" in point:
        return f"error: {point['error'][:60]}"
    if point["generators"] != ["MBM"] or point["candidates"] != batch:
        return f"not a model step: {point['candidates']} x {','.join(point['generators'])}"
    return f"{point['seconds']:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", default="10,25,50,100,200,300")
    parser.add_argument("--objectives", default="2,3")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="ours and/or 'Ax defaults'")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point and contender")
    parser.add_argument("--seeds", default="0", help="Sobol seeds of the history (each point runs once per seed)")
    parser.add_argument("--quick", action="store_true", help="observations 10,25; 2 objectives")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--contender", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        observations, objectives, batch, seed = (int(x) for x in args.point.split(","))
        print(json.dumps(measure_point(observations, objectives, batch, args.contender, seed)))
        return
    if args.quick:
        args.observations, args.objectives = "10,25", "2"
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {CONTENDERS}")
    grid = [
        (n, m, q, seed)
        for m in (int(x) for x in args.objectives.split(","))
        for n in (int(x) for x in args.observations.split(","))
        for q in (int(x) for x in args.batches.split(","))
        for seed in (int(x) for x in args.seeds.split(","))
        if n > q
    ]
    header = " | ".join(f"{c}: next call | {c}: first call | {c}: memory | {c}: HV gain" for c in contenders)
    ratio = len(contenders) == 2
    tail = " Ax defaults / ours (next call) |" if ratio else ""
    print(f"| objectives | observations | batch | seed | {header} |{tail}")
    print("|---|---|---|---|" + "---|---|---|---|" * len(contenders) + ("---|" if ratio else ""))
    for n, m, q, seed in grid:
        started = time.perf_counter()
        points = {c: run_point(n, m, q, c, args.timeout, seed) for c in contenders}
        cells = []
        for c in contenders:
            p = points[c]
            ok = "seconds" in p and p["generators"] == ["MBM"] and p["candidates"] == q
            first = f"{p['first_seconds']:.1f} s" if ok else "-"
            memory = f"+{p['growth_mib']:.0f} MiB over {p['rss_before_mib']:.0f}" if ok else "-"
            gain = f"{p['hv_gain_percent']:.3f}%" if ok else "-"
            cells.append(f"{cell(p, q, args.timeout)} | {first} | {memory} | {gain}")
        line = f"| {m} | {n} | {q} | {seed} | " + " | ".join(cells) + " |"
        if ratio:
            ours, ax = points["ours"], points["Ax defaults"]
            both = all("seconds" in p for p in (ours, ax))
            line += f" {ax['seconds'] / ours['seconds']:.1f}x |" if both else " - |"
        print(line, flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s with process starts)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
