"""The qNEHVI + SAAS case study's scale: 24 parameters, batches of 16, 240 evaluations.

The case study (shared/reference) tuned 24 hyperparameters of a production model, two objectives, 16
trainings at a time, 240 in all, and found that a SAAS model (sparse axis-aligned subspace prior,
fully Bayesian by NUTS) was what made a GP useful in 24 dimensions. That is the regime where
`algorithm: auto` picks SAASBO. This benchmark stands in for it with a problem whose truth is known:
a BoTorch problem embedded in 24 dimensions, only a few of which matter (their positions fixed and
scattered, the others ignored by the response), all minimised, the problem's reference point as the
objective thresholds.

Contenders, each driving our engine (search/engine.py) batch-synchronously: ask 16, evaluate, tell:
- SAASBO: `algorithm: saasbo` (Ax's warped SAAS GP, qLogNEHVI), the NUTS chain as `--saas-model` sets
  it (engine.ModelSettings: saas_warmup_steps, saas_num_samples, saas_thinning, num_restarts, raw_samples);
- GP qLogNEHVI: `algorithm: qnehvi`, the engine's default GP (MAP-fitted, warm-started);
- Sobol: `algorithm: sobol`.
Both model-based contenders start from the same 16 Sobol points (`initialTrials: 16`).

Reported per contender: log10 hypervolume regret (log10(max HV - HV), lower is better) after each
quarter of the budget, mean ± standard error over seeds; seconds per model-based batch of 16 (mean
and max); wall time. A run whose batch takes longer than `--max-batch-seconds` stops there and is
reported as too slow, with the batch time it reached. Runs go to worker processes (`--jobs`), each
with its share of the cores as torch threads.

    .venv/bin/python bench/case_study.py                       # DTLZ2 in 24-d, 3 seeds, 240 evaluations
    .venv/bin/python bench/case_study.py --saas-model '{}'     # Ax's own NUTS chain (512/256/16)
    .venv/bin/python bench/case_study.py --cheap-saas --seeds 1 --evaluations 64  # what 2 cores can afford
    .venv/bin/python bench/case_study.py --quick               # DTLZ2 in 24-d, 12 in 4s, a tiny chain
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

DIMENSIONS = 24
# The SAAS chain the engine ships (engine.ModelSettings defaults), written out so that a run says what it measured.
DEFAULT_SAAS_MODEL: dict[str, Any] = {}
# Cheap enough for 2 cores: 8 of 64 NUTS samples kept after 128 warm-up steps, 4 restarts from 256 raw samples.
CHEAP_SAAS_MODEL: dict[str, Any] = {
    "saas_warmup_steps": 128,
    "saas_num_samples": 64,
    "saas_thinning": 8,
    "num_restarts": 4,
    "raw_samples": 256,
}
QUICK_SAAS_MODEL: dict[str, Any] = {
    "saas_warmup_steps": 16,
    "saas_num_samples": 16,
    "saas_thinning": 8,
    "num_restarts": 2,
    "raw_samples": 64,
}


@dataclass(frozen=True)
class Embedded:
    """A BoTorch multi-objective problem whose inputs are `relevant` positions of a 24-d unit box."""

    name: str
    base: str
    relevant: tuple[int, ...]

    def build(self) -> Any:
        from botorch.test_functions.multi_objective import DTLZ2, BraninCurrin

        if self.base == "DTLZ2":
            return DTLZ2(dim=6, num_objectives=2)
        return BraninCurrin()

    def evaluate(self, problem: Any, x: list[float]) -> list[float]:
        lower, upper = problem.bounds[0], problem.bounds[1]
        inner = torch.tensor([[float(x[i]) for i in self.relevant]], dtype=torch.double)
        with torch.no_grad():
            return [float(v) for v in problem(lower + inner * (upper - lower))[0]]


PROBLEMS = {
    "DTLZ2-24": Embedded("DTLZ2 (6 of 24 dimensions)", "DTLZ2", (2, 5, 9, 13, 17, 22)),
    "BraninCurrin-24": Embedded("BraninCurrin (2 of 24 dimensions)", "BraninCurrin", (7, 19)),
}
CONTENDERS = {"SAASBO": "saasbo", "GP qLogNEHVI": "qnehvi", "Sobol": "sobol"}


def log_regret(problem: Any, ys: list[list[float]]) -> float:
    """log10(max HV - HV of the points seen), for a minimised problem."""
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    ref = -torch.as_tensor(problem._ref_point, dtype=torch.double)  # the maximisation view
    y = -torch.tensor(ys, dtype=torch.double).reshape(-1, len(ref))
    y = y[(y > ref).all(dim=-1)]
    hv = 0.0 if len(y) == 0 else Hypervolume(ref_point=ref).compute(y[is_non_dominated(y)])
    return math.log10(max(problem.max_hv - hv, 1e-12))


@dataclass(frozen=True)
class Unit:
    problem: str
    contender: str
    seed: int
    evaluations: int
    batch: int
    saas_model: str  # JSON, so that a unit pickles to a worker as plain data
    max_batch_seconds: float


@dataclass
class UnitResult:
    unit: Unit
    regrets: dict[int, float] = field(default_factory=dict)  # evaluations seen -> log10 regret
    batch_seconds: list[float] = field(default_factory=list)  # model-based batches only
    seconds: float = 0.0
    too_slow: bool = False


def spec_document(embedded: Embedded, problem: Any, algorithm: str, unit: Unit) -> dict[str, Any]:
    names = [f"f{i}" for i in range(problem.num_objectives)]
    return {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "metadata": {"name": "case-study"},
        "spec": {
            "parameters": [
                {"name": f"x{i:02d}", "type": "range", "lower": 0.0, "upper": 1.0} for i in range(DIMENSIONS)
            ],
            "objectives": [
                {"metric": name, "goal": "minimize", "threshold": float(ref)}
                for name, ref in zip(names, problem._ref_point, strict=True)
            ],
            "metrics": {"source": "terminationMessage"},
            "budget": {"maxTrials": unit.evaluations, "parallelism": unit.batch},
            "algorithm": {"name": algorithm, "seed": unit.seed, "initialTrials": unit.batch},
            "trial": {"command": ["in-process"]},
        },
    }


def run_unit(unit: Unit) -> UnitResult:
    """One contender on one seed, ask-evaluate-tell in batches; module-level so that a worker process can run it."""
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import Engine, ModelSettings

    embedded = PROBLEMS[unit.problem]
    problem = embedded.build()
    algorithm = CONTENDERS[unit.contender]
    spec = load_experiment(spec_document(embedded, problem, algorithm, unit), cluster=False).spec
    model = ModelSettings(**json.loads(unit.saas_model)) if algorithm == "saasbo" else ModelSettings()
    result = UnitResult(unit)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = Engine.create(spec, "case-study", model=model)
        ys: list[list[float]] = []
        while len(ys) < unit.evaluations:
            asked = time.perf_counter()
            candidates = engine.generate(min(unit.batch, unit.evaluations - len(ys)))
            seconds = time.perf_counter() - asked
            if not candidates:
                raise RuntimeError(f"{unit.contender}: the engine proposed nothing after {len(ys)} evaluations")
            if not candidates[0].generator.lower().startswith(("sobol", "center")):
                result.batch_seconds.append(seconds)
            for candidate in candidates:
                x = [float(candidate.parameters[f"x{i:02d}"]) for i in range(DIMENSIONS)]
                y = embedded.evaluate(problem, x)
                engine.complete(candidate.index, {f"f{i}": v for i, v in enumerate(y)})
                ys.append(y)
            for mark in checkpoints(unit.evaluations):
                if len(ys) >= mark and mark not in result.regrets:
                    result.regrets[mark] = log_regret(problem, ys[:mark])
            if seconds > unit.max_batch_seconds:
                result.too_slow = True
                break
    result.seconds = time.perf_counter() - started
    return result


def checkpoints(evaluations: int) -> list[int]:
    return [evaluations * k // 4 for k in (1, 2, 3, 4)]


def start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_units(units: list[Unit], jobs: int) -> list[UnitResult]:
    """Runs the units, `jobs` at a time in spawned worker processes (torch does not survive fork well)."""
    ordered = sorted(units, key=lambda u: (u.contender != "SAASBO", u.contender == "Sobol", u.seed))
    results: list[UnitResult] = []
    if jobs <= 1:
        for unit in ordered:
            results.append(report(run_unit(unit)))
        return results
    threads = max(1, (os.cpu_count() or jobs) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(run_unit, unit) for unit in ordered]
        for future in as_completed(futures):
            results.append(report(future.result()))
    return results


def report(result: UnitResult) -> UnitResult:
    unit = result.unit
    batches = result.batch_seconds
    timing = f"{statistics.fmean(batches):.1f} s per model batch (max {max(batches):.1f})" if batches else "no model"
    regrets = ", ".join(f"{mark}: {value:.3f}" for mark, value in sorted(result.regrets.items()))
    slow = " TOO SLOW: stopped after this batch" if result.too_slow else ""
    print(f"  {unit.contender} seed {unit.seed}: {result.seconds:.0f} s, {timing}; regret {regrets}{slow}", flush=True)
    return result


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:.3f} ± {se:.3f}"


def print_table(problem: str, results: list[UnitResult], evaluations: int, batch: int) -> None:
    marks = checkpoints(evaluations)
    print(f"\n{PROBLEMS[problem].name}, batches of {batch}: log10 HV regret, mean ± standard error (lower is better)\n")
    header = " | ".join(f"after {mark}" for mark in marks)
    print(f"| contender | {header} | s per model batch (mean, max) | s per run | seeds |")
    print("|---|" + "---|" * len(marks) + "---|---|---|")
    for contender in CONTENDERS:
        mine = [r for r in results if r.unit.contender == contender]
        if not mine:
            continue
        cells = " | ".join(mean_se([r.regrets[m] for r in mine if m in r.regrets]) for m in marks)
        batches = [s for r in mine for s in r.batch_seconds]
        timing = f"{statistics.fmean(batches):.1f}, {max(batches):.1f}" if batches else "-"
        if any(r.too_slow for r in mine):
            timing += " (too slow: stopped)"
        wall = statistics.fmean(r.seconds for r in mine)
        print(f"| {contender} | {cells} | {timing} | {wall:.0f} | {len(mine)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=sorted(PROBLEMS), default=["DTLZ2-24"])
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="run only these contenders")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=240)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--saas-model",
        default=json.dumps(DEFAULT_SAAS_MODEL),
        help="JSON of engine.ModelSettings fields for the SAASBO contender ('{}': the engine's defaults)",
    )
    parser.add_argument("--cheap-saas", action="store_true", help=f"SAASBO settings {CHEAP_SAAS_MODEL}")
    parser.add_argument("--max-batch-seconds", type=float, default=1800.0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="DTLZ2-24, 12 evaluations in 4s, 1 seed, a tiny chain")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.seeds, args.evaluations, args.batch = ["DTLZ2-24"], 1, 12, 4
        if args.saas_model == json.dumps(DEFAULT_SAAS_MODEL):  # a tiny chain and optimizer: the test checks plumbing
            args.saas_model = json.dumps(QUICK_SAAS_MODEL)
    if args.cheap_saas:
        args.saas_model = json.dumps(CHEAP_SAAS_MODEL)
    json.loads(args.saas_model)  # a typo fails here, not in a worker
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    print(
        f"{args.evaluations} evaluations in batches of {args.batch} over {DIMENSIONS} parameters, seeds "
        f"{list(range(args.seeds))}, {args.jobs} worker process(es); SAASBO settings {args.saas_model}",
        flush=True,
    )
    for problem in args.problems:
        units = [
            Unit(problem, c, seed, args.evaluations, args.batch, args.saas_model, args.max_batch_seconds)
            for c in contenders
            for seed in range(args.seeds)
        ]
        print(f"\n{PROBLEMS[problem].name}:", flush=True)
        print_table(problem, run_units(units, args.jobs), args.evaluations, args.batch)


if __name__ == "__main__":
    main()
