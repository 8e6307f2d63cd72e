"""Sample efficiency: hypervolume regret after a fixed number of evaluations, ours vs peers.

Problems from BoTorch's `test_functions.multi_objective` with known maximal hypervolume
(BraninCurrin 2-d; DTLZ2 6-d, 2 objectives; VehicleSafety 5-d, 3 objectives; ZDT1 6-d), all
minimised, with the problem's reference point as the objective thresholds. Every contender
gets the same budget, 48 evaluations asked in batches of 4, and each (problem, seed) pair:

- ours: the NASExperiment loop (ExperimentLoop + Engine, Ax's default strategy behind it:
  center + Sobol, then qLogNEHVI), trials on the in-process backend, state saved each step, with
  no look-ahead so that each batch of 4 is asked once the previous 4 have reported, as for the peers;
- Ax: `ax.Client` with its defaults (get_next_trials(4) / complete_trial);
- Optuna: its default sampler for a multi-objective study, NSGA-II and GPSampler, each
  asked 4 trials at a time before telling their values;
- Sobol: 48 scrambled Sobol points.

Reported: log10 hypervolume regret, log10(max HV - HV), mean and standard error over seeds,
after 24 and after 48 evaluations (lower is better), and the ratio of our regret to each
peer's (below 1: ours is better). Wall time per run is printed too; it is not the point.
The (problem, contender, seed) runs are independent, so they go to one worker process per core,
longest first, each worker with its share of the cores as torch threads (`--jobs 1`: in turn).

    .venv/bin/python bench/sample_efficiency.py              # 4 problems x 5 seeds x 6 contenders
    .venv/bin/python bench/sample_efficiency.py --quick      # BraninCurrin and ZDT1, 2 seeds, 24 evaluations
    .venv/bin/python bench/sample_efficiency.py --digits     # the digits NAS example, ours vs Sobol, 3 seeds
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4
MODEL_ENV = "NAS_BENCH_OURS_MODEL"  # --ours-model, handed to the worker processes


@dataclass(frozen=True)
class Problem:
    name: str
    make: Callable[[], Any]

    def build(self) -> Any:
        return self.make()


def problems() -> dict[str, Problem]:
    from botorch.test_functions.multi_objective import DTLZ2, ZDT1, BraninCurrin, VehicleSafety

    return {
        "BraninCurrin": Problem("BraninCurrin", lambda: BraninCurrin()),
        "DTLZ2": Problem("DTLZ2 (6-d)", lambda: DTLZ2(dim=6, num_objectives=2)),
        "VehicleSafety": Problem("VehicleSafety (3 obj)", lambda: VehicleSafety()),
        "ZDT1": Problem("ZDT1 (6-d)", lambda: ZDT1(dim=6)),
    }


def evaluate(problem: Any, x: list[float]) -> list[float]:
    with torch.no_grad():
        return [float(v) for v in problem(torch.tensor([x], dtype=torch.double))[0]]


def log_regret(problem: Any, ys: list[list[float]]) -> float:
    """log10(max HV - HV of the points seen), for a minimised problem."""
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    ref = -torch.as_tensor(problem._ref_point, dtype=torch.double)  # maximisation view
    y = -torch.tensor(ys, dtype=torch.double)
    y = y[(y > ref).all(dim=-1)]
    hv = 0.0 if len(y) == 0 else Hypervolume(ref_point=ref).compute(y[is_non_dominated(y)])
    return math.log10(max(problem.max_hv - hv, 1e-12))


def bounds(problem: Any) -> list[tuple[float, float]]:
    return [(float(lo), float(hi)) for lo, hi in zip(problem.bounds[0], problem.bounds[1], strict=True)]


# ------------------------------------------------------------------ contenders


def run_ours(problem: Any, budget: int, seed: int) -> list[list[float]]:
    from nas_operator.backends.inprocess import InProcessBackend
    from nas_operator.core.backend import TrialLaunch
    from nas_operator.core.loop import ExperimentLoop
    from nas_operator.core.state import LoopState, spec_fingerprint
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import Engine, ModelSettings
    from nas_operator.search.worker import InlineEngineWorker
    from nas_operator.storage.store import FileStore

    dims = bounds(problem)
    names = [f"f{i}" for i in range(problem.num_objectives)]
    document = {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "metadata": {"name": "bench"},
        "spec": {
            "parameters": [
                {"name": f"x{i}", "type": "range", "lower": lo, "upper": hi} for i, (lo, hi) in enumerate(dims)
            ],
            "objectives": [
                {"metric": name, "goal": "minimize", "threshold": float(ref)}
                for name, ref in zip(names, problem._ref_point, strict=True)
            ],
            "metrics": {"source": "terminationMessage"},
            "budget": {"maxTrials": budget, "parallelism": BATCH},
            "algorithm": {"name": "auto", "seed": seed},
            "trial": {"command": ["in-process"]},
        },
    }
    spec = load_experiment(document, cluster=False).spec

    def trial(launch: TrialLaunch) -> dict[str, float]:
        x = [float(launch.parameters[f"x{i}"]) for i in range(len(dims))]
        return dict(zip(names, evaluate(problem, x), strict=True))

    engine = Engine.create(spec, "bench", model=ModelSettings(**json.loads(os.environ.get(MODEL_ENV, "{}"))))
    backend = InProcessBackend(trial, max_workers=BATCH)
    with tempfile.TemporaryDirectory(prefix="nas-bench-") as tmp:
        state = LoopState("bench", spec_fingerprint(spec))
        loop = ExperimentLoop(
            spec,
            state,
            InlineEngineWorker(engine),
            backend,
            FileStore(Path(tmp)),
            engine.snapshot(),
            lookahead=0,
            max_generation_failures=3,
        )
        try:
            while not loop.finished:
                loop.step()
                time.sleep(0.001)
        finally:
            backend.shutdown()
    if state.reason == "GenerationFailed":  # a broken configuration must not pass for a poor result
        raise RuntimeError(state.message)
    trials = sorted(state.trials.values(), key=lambda t: t.index)
    return [[t.metrics[name] for name in names] for t in trials if t.status == "succeeded"]


def run_ax(problem: Any, budget: int, seed: int) -> list[list[float]]:
    from ax import Client, RangeParameterConfig

    dims = bounds(problem)
    names = [f"f{i}" for i in range(problem.num_objectives)]
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=f"x{i}", parameter_type="float", bounds=(lo, hi))
            for i, (lo, hi) in enumerate(dims)
        ]
    )
    client.configure_optimization(
        objective=", ".join(f"-{name}" for name in names),
        outcome_constraints=[f"{name} <= {float(ref)}" for name, ref in zip(names, problem._ref_point, strict=True)],
    )
    ys: list[list[float]] = []
    while len(ys) < budget:
        batch = client.get_next_trials(max_trials=min(BATCH, budget - len(ys)))
        for index, parameters in batch.items():
            y = evaluate(problem, [float(parameters[f"x{i}"]) for i in range(len(dims))])
            client.complete_trial(trial_index=index, raw_data=dict(zip(names, y, strict=True)))
            ys.append(y)
    return ys


def run_optuna(problem: Any, budget: int, seed: int, sampler_name: str) -> list[list[float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = bounds(problem)
    m = problem.num_objectives
    sampler: Any
    if sampler_name == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    elif sampler_name == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:  # the class a study picks when given none (TPESampler in Optuna 5), built as it is, plus the seed
        default: Any = type(optuna.create_study(directions=["minimize"] * m).sampler)
        sampler = default(seed=seed)
    study = optuna.create_study(directions=["minimize"] * m, sampler=sampler)
    ys: list[list[float]] = []
    while len(ys) < budget:
        trials = [study.ask() for _ in range(min(BATCH, budget - len(ys)))]
        for trial in trials:
            x = [trial.suggest_float(f"x{i}", lo, hi) for i, (lo, hi) in enumerate(dims)]
            y = evaluate(problem, x)
            study.tell(trial, y)
            ys.append(y)
    return ys


def default_optuna_sampler_name() -> str:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return type(optuna.create_study(directions=["minimize", "minimize"]).sampler).__name__


def run_sobol(problem: Any, budget: int, seed: int) -> list[list[float]]:
    dims = bounds(problem)
    engine = torch.quasirandom.SobolEngine(dimension=len(dims), scramble=True, seed=seed)  # type: ignore[no-untyped-call]
    unit = engine.draw(budget, dtype=torch.double)
    return [
        evaluate(problem, [lo + float(u) * (hi - lo) for u, (lo, hi) in zip(row, dims, strict=True)]) for row in unit
    ]


CONTENDERS: dict[str, Callable[[Any, int, int], list[list[float]]]] = {
    "ours": run_ours,
    "Ax Client": run_ax,
    "Optuna default": lambda p, b, s: run_optuna(p, b, s, "default"),
    "Optuna NSGA-II": lambda p, b, s: run_optuna(p, b, s, "nsga2"),
    "Optuna GPSampler": lambda p, b, s: run_optuna(p, b, s, "gp"),
    "Sobol": run_sobol,
}


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


# Rough relative cost of one run. Problems go heaviest first, and within a problem the longest
# runs first (so that the last worker does not run alone at the end); each problem's table is
# printed as soon as its runs are in. Only the order depends on these numbers.
COST_PROBLEM = {"BraninCurrin": 1.0, "DTLZ2": 1.0, "VehicleSafety": 3.0, "ZDT1": 1.0}
COST_CONTENDER = {"ours": 60.0, "Ax Client": 60.0, "Optuna GPSampler": 12.0}


@dataclass(frozen=True)
class Unit:
    problem: str
    contender: str
    seed: int


@dataclass(frozen=True)
class UnitResult:
    unit: Unit
    half: float
    final: float
    seconds: float


def start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # Ax's per-trial INFO lines would bury the progress lines (run_unit silences the warnings).
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(logging.WARNING)


def run_unit(unit: Unit, evaluations: int) -> UnitResult:
    """One contender on one (problem, seed); module-level so that a worker process can run it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the peers' deprecation warnings, from their imports on
        problem = problems()[unit.problem].build()
        started = time.perf_counter()
        ys = CONTENDERS[unit.contender](problem, evaluations, unit.seed)
        seconds = time.perf_counter() - started
    return UnitResult(unit, log_regret(problem, ys[: evaluations // 2]), log_regret(problem, ys[:evaluations]), seconds)


def run_units(units: list[Unit], evaluations: int, jobs: int) -> Iterator[UnitResult]:
    """Yields the units' results as they come, `jobs` at a time in worker processes (spawned: torch
    does not survive fork well), each worker with cores/jobs torch threads so they do not fight."""
    ordered = sorted(
        units, key=lambda u: (-COST_PROBLEM[u.problem], u.problem, -COST_CONTENDER.get(u.contender, 1.0), u.seed)
    )
    if jobs <= 1:
        for unit in ordered:
            yield run_unit(unit, evaluations)
        return
    threads = max(1, (os.cpu_count() or jobs) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(run_unit, unit, evaluations) for unit in ordered]
        for future in as_completed(futures):
            yield future.result()


def print_table(problem: str, runs: list[UnitResult], contenders: list[str], evaluations: int) -> None:
    half = evaluations // 2
    by_contender = {
        name: sorted((r for r in runs if r.unit.contender == name), key=lambda r: r.unit.seed) for name in contenders
    }
    print(f"\n{problems()[problem].name}: log10 HV regret, mean ± standard error (lower is better)\n")
    print(f"| contender | after {half} | after {evaluations} | ours / this (final regret) | s per run |")
    print("|---|---|---|---|---|")
    ours = by_contender.get("ours")
    ours_final = statistics.fmean(10**r.final for r in ours) if ours else None
    for name, mine in by_contender.items():
        h_mean, h_se = mean_se([r.half for r in mine])
        f_mean, f_se = mean_se([r.final for r in mine])
        peer_final = statistics.fmean(10**r.final for r in mine)
        ratio = f"{ours_final / peer_final:.2f}" if ours_final is not None and name != "ours" else "-"
        print(
            f"| {name} | {h_mean:.3f} ± {h_se:.3f} | {f_mean:.3f} ± {f_se:.3f} | {ratio} "
            f"| {statistics.fmean(r.seconds for r in mine):.0f} |",
            flush=True,
        )


def synthetic(args: argparse.Namespace) -> None:
    contenders = [k for k in CONTENDERS if not args.only or k in args.only]
    print(
        f"{args.evaluations} evaluations in batches of {BATCH}, seeds {list(range(args.seeds))}, "
        f"{args.jobs} worker process(es); "
        f"Optuna's default multi-objective sampler here is {default_optuna_sampler_name()}",
        flush=True,
    )
    units = [Unit(p, c, s) for p in args.problems for c in contenders for s in range(args.seeds)]
    per_problem = {p: len(contenders) * args.seeds for p in args.problems}
    done: dict[str, list[UnitResult]] = {p: [] for p in args.problems}
    started = time.perf_counter()
    for count, result in enumerate(run_units(units, args.evaluations, args.jobs), start=1):
        u = result.unit
        print(
            f"   [{count}/{len(units)}] {u.problem} {u.contender} seed {u.seed}: "
            f"{result.final:.3f} ({result.seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        done[u.problem].append(result)
        if len(done[u.problem]) == per_problem[u.problem]:
            print_table(u.problem, done[u.problem], contenders, args.evaluations)
            print(f"({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
    print(f"\nwall time: {(time.perf_counter() - started) / 60:.1f} min", flush=True)


# ------------------------------------------------------------------ the digits NAS example


@dataclass(frozen=True)
class DigitsRun:
    half_hv: float
    final_hv: float
    front: int
    seconds: float


def first_trials(results: dict[int, dict[str, float]], k: int) -> dict[int, dict[str, float]]:
    """The results of the first k trials launched: what a budget of k would have seen."""
    return {i: m for i, m in results.items() if i < k}


def digits(args: argparse.Namespace) -> None:
    """The digits MLP example (real trainings): hypervolume after N trials, ours vs Sobol."""
    import yaml
    from rich.console import Console

    from nas_operator.local.runner import run_local
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.pareto import hypervolume, pareto_indices

    base = yaml.safe_load((ROOT / "examples" / "digits-mlp.yaml").read_text())
    half = args.digits_trials // 2
    rows: dict[str, list[DigitsRun]] = {}
    for algorithm in ("auto", "sobol"):
        for seed in range(args.digits_seeds):
            document = copy.deepcopy(base)
            document["spec"]["budget"].update(maxTrials=args.digits_trials, maxDuration="3h")
            document["spec"]["algorithm"] = {"name": algorithm, "initialTrials": 8, "seed": seed}
            experiment = load_experiment(document, cluster=False)
            with tempfile.TemporaryDirectory(prefix="nas-digits-") as tmp:
                started = time.perf_counter()
                outcome = run_local(
                    experiment,
                    Path(tmp),
                    fresh=True,
                    console=Console(file=sys.stderr),
                    show_progress=False,
                    workdir=ROOT,
                )
                seconds = time.perf_counter() - started
            results = outcome.state.results()
            spec = experiment.spec

            # Front sizes part-way through say what a smaller budget (the demo's, say) would have found.
            fronts = {
                k: len(pareto_indices(spec, first_trials(results, k)))
                for k in sorted({half, 36, 40, args.digits_trials})
                if k <= args.digits_trials
            }
            run = DigitsRun(
                hypervolume(spec, first_trials(results, half)),
                hypervolume(spec, results),
                fronts[args.digits_trials],
                seconds,
            )
            rows.setdefault(algorithm, []).append(run)
            print(
                f"   digits {algorithm} seed {seed}: HV {run.final_hv:.1f}, front trials after "
                f"{', '.join(f'{k}: {n}' for k, n in fronts.items())} ({seconds:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\ndigits MLP (examples/digits-mlp.yaml, seeds 0-{args.digits_seeds - 1}): hypervolume above the "
        "thresholds, mean ± standard error (higher is better)\n"
    )
    print(f"| contender | HV after {half} | HV after {args.digits_trials} | front trials | minutes per run |")
    print("|---|---|---|---|---|")
    for algorithm, runs in rows.items():
        h_mean, h_se = mean_se([r.half_hv for r in runs])
        f_mean, f_se = mean_se([r.final_hv for r in runs])
        front_sizes = ", ".join(str(r.front) for r in runs)
        label = "ours (Sobol, then qLogNEHVI)" if algorithm == "auto" else "Sobol only"
        print(
            f"| {label} | {h_mean:.1f} ± {h_se:.1f} | {f_mean:.1f} ± {f_se:.1f} | {front_sizes} "
            f"| {statistics.fmean(r.seconds for r in runs) / 60:.1f} |"
        )
    if "auto" in rows and "sobol" in rows:
        ratio = statistics.fmean(r.final_hv for r in rows["auto"]) / statistics.fmean(r.final_hv for r in rows["sobol"])
        print(f"\nratio of final hypervolumes, ours / Sobol: {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(problems()), choices=list(problems()))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evaluations", type=int, default=48)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), help="run only these contenders")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="runs at a time, each in its own process with cores/jobs torch threads (default: one per core)",
    )
    parser.add_argument("--quick", action="store_true", help="BraninCurrin and ZDT1, 2 seeds, 24 evaluations")
    parser.add_argument("--digits", action="store_true", help="the digits NAS example instead (real trainings)")
    parser.add_argument("--digits-trials", type=int, default=48)
    parser.add_argument("--digits-seeds", type=int, default=3)
    parser.add_argument(
        "--ours-model",
        default="{}",
        help="our model node's settings as JSON, e.g. '{\"warm_start\": false}' (search/engine.py ModelSettings)",
    )
    args = parser.parse_args()
    os.environ[MODEL_ENV] = args.ours_model
    if args.digits:
        if args.quick:
            args.digits_trials, args.digits_seeds = 16, 2
        digits(args)
        return
    if args.quick:
        args.problems, args.seeds, args.evaluations = ["BraninCurrin", "ZDT1"], 2, 24
    synthetic(args)


if __name__ == "__main__":
    main()
