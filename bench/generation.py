"""Candidate-generation latency and peak memory vs observations, objectives and batch size.

The 6-parameter digits MLP space (log-scale ints, a float, an ordered choice: the mixed space
a NAS user has), with N completed observations from a smooth synthetic response (Ax's own
initialization trials, so no model fit is needed to get there). Then one `generate(batch)` call
is timed: Ax's default model-based step (a GP per objective, qLogNEHVI, mixed optimizer). Every point runs in a fresh
process so its peak resident memory (ru_maxrss) is its own; the table shows the growth over
the process's size just before the call. A point that runs past --timeout is reported as such.

    .venv/bin/python bench/generation.py          # N in 10..200, 2 and 3 objectives, batch 1 and 4
    .venv/bin/python bench/generation.py --quick  # N in 10, 25; 2 objectives
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


def spec_document(objectives: int, observations: int) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    spec = document["spec"]
    if objectives == 3:
        spec["objectives"].append({"metric": "latency_p99_ms", "goal": "minimize", "threshold": 5.0})
    spec["budget"]["maxTrials"] = 1000
    # The observations are Ax's own initialization (center + Sobol: no model fit to get there),
    # so the timed call is the first model-based one, with exactly that much data.
    spec["algorithm"] = {"name": "auto", "initialTrials": observations, "seed": 0}
    return dict(document)


def measure_point(observations: int, objectives: int, batch: int) -> dict[str, Any]:
    """In this process: complete `observations` initial trials, then time one model-based generation."""
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import Engine

    spec = load_experiment(spec_document(objectives, observations), cluster=False).spec
    engine = Engine.create(spec, "bench")
    while sum(1 for s in engine.trial_statuses().values() if s == "COMPLETED") < observations:
        for candidate in engine.generate(observations - len(engine.trial_statuses())):
            engine.complete(candidate.index, response(candidate.parameters))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    candidates = engine.generate(batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "growth_mib": (peak - before) / 1024,
        "candidates": len(candidates),
        "generator": candidates[0].generator if candidates else "",
    }


def run_point(observations: int, objectives: int, batch: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--point", f"{observations},{objectives},{batch}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", default="10,25,50,100,200")
    parser.add_argument("--objectives", default="2,3")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per point")
    parser.add_argument("--quick", action="store_true", help="observations 10,25; 2 objectives")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        observations, objectives, batch = (int(x) for x in args.point.split(","))
        print(json.dumps(measure_point(observations, objectives, batch)))
        return
    if args.quick:
        args.observations, args.objectives = "10,25", "2"
    grid = [
        (n, m, q)
        for m in (int(x) for x in args.objectives.split(","))
        for n in (int(x) for x in args.observations.split(","))
        for q in (int(x) for x in args.batches.split(","))
    ]
    print("| objectives | observations | batch | generation | peak memory growth | process RSS before |")
    print("|---|---|---|---|---|---|")
    for n, m, q in grid:
        started = time.perf_counter()
        point = run_point(n, m, q, args.timeout)
        if point.get("timeout"):
            cells = f"> {args.timeout:.0f} s (stopped) | - | -"
        elif "error" in point:
            cells = f"error: {point['error'][:60]} | - | -"
        elif point["generator"] != "MBM" or point["candidates"] != q:
            cells = f"not a model step: {point['candidates']} x {point['generator']} | - | -"
        else:
            cells = f"{point['seconds']:.1f} s | {point['growth_mib']:.0f} MiB | {point['rss_before_mib']:.0f} MiB"
        print(f"| {m} | {n} | {q} | {cells} |", flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s with process start)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
