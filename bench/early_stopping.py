"""Early stopping on learning curves: training compute and final hypervolume, our rule vs single-objective peers.

Why: a stopping rule saves compute only if the front the user gets is not worse for it. A single-metric rule stops
whatever trails on the first objective, which on a NAS problem is the small, fast model at the cheap end of the front;
our rule (nas_operator/search/stopping_rule.py) stops a trial only when even its optimistic projection misses a
threshold or is dominated. This benchmark measures both sides of that trade on problems whose truth is known. The rule
changes often: the header line names the commit and the digests of the rule and engine files that were measured.

Problems. Every trial "trains" for T progression steps (epochs) and logs a learning curve whose *final* value is the
problem's objective: value(t) = final + (start - final) * (exp(-t/tau) - exp(-T/tau)) / (1 - exp(-T/tau)), so
value(0) = start (the untrained value, the same for every configuration), value(T) = final, plus Gaussian noise on each
logged point. tau depends on the parameters, so some configurations are slow starters whose curves cross the others.

- Branin-Currin (BoTorch, 2-d, both minimised, both objectives learning curves starting from about their worst values
  on the domain, 304 and 13.8; tau from 1 to 10 steps of 20, growing with x0 + x1, noise 1% of the reference point).
- digits NAS (the digits MLP space of examples/digits-mlp.yaml without `epochs`, scored by bench/common.py::response):
  val_acc maximised, a learning curve from chance (0.1), tau = 1.5 steps of 20 x sqrt(0.01 / learning_rate) x
  sqrt(batch_size / 32) x (1 + dropout) (a small learning rate or a large batch is a slow starter), noise 0.005;
  num_params minimised, static: logged once at progression 0, before training.

Thresholds are the problem's reference point (Branin-Currin's 18 and 6; the example's 0.85 and 12000). The maximal
hypervolume is BoTorch's for Branin-Currin and computed exactly for the NAS problem (every integer layer-width pair at
the best learning rate and no dropout). Regret is log10(max HV - HV) of the *noise-free* finals of the trials that
completed their training: the configurations the user gets fully trained; early-stopped trials are not on the front.

Simulation: a trial budget of N trials (default 32), 4 running at a time, each candidate asked from our `Engine` (Ax's
center + Sobol initialisation, 8 trials, then qLogNEHVI) as slots free up; a clock where each running trial advances
one progression per tick; after each tick, trials at T complete (their reduced curve values go to the engine), then
the policy may stop running trials, then free slots are refilled. Contenders, with the same seeds and problems:

1. none: every trial trains to T.
2. ours: `judge(...)` with EarlyStopping(progression="step", min_progression=3, min_reference_trials=3, the default
   projection unless --projection), references the trials that completed; a stopped trial goes to
   `engine.early_stop(index, verdict.projected)`, as core/loop.py sends it.
3. Ax percentile: Ax's own `PercentileEarlyStoppingStrategy` on the first objective, with its defaults (50th
   percentile, min_curves 5) and the same min_progression 3, asked through `Client.should_stop_trial_early`; the
   experiment is our Engine's Ax Client (so the generation strategy is exactly ours), which gets every logged point
   with its progression (`attach_data(..., progression=t)`) and each finished trial's reduced values at T; a stopped
   trial is marked EARLY_STOPPED with its last data, as Ax does.
4. Katib median: Katib's median stopping rule as Katib documents it, implemented here (`katib_median_stop`), on the
   first objective, min_trials_required 3 and start_step 3 (the others' minimum progression; Katib's default is 4);
   a stopped trial goes to `engine.early_stop(index, its values so far)`.

Reported per problem: training compute (progression steps trained, summed over trials, and as a fraction of none's),
trials stopped, stopped trials whose true final would have added hypervolume to the run's final front (a stopping
mistake), and log10 HV regret, mean ± standard error over seeds, with ours / peer ratios (compute; mean regret).
Then equal compute: every policy gets B = 50% of none's compute at N trials and launches trials (up to 3N) while the
steps of the running trials, were they all to finish, still fit in B, so a trial is never cut by the budget; final
regret per policy. None's equal-compute run is the first B / T trials of its N-trial run (exactly the trials it would
launch: with no stopping, trials start in the same waves with the same history). Last, the issue's targets: (1) at
least 35% less compute than none at a final regret no worse than none's mean plus one standard error of none's mean;
(2) a lower mean final regret than Ax's percentile rule at equal compute.

`--variants` adds two diagnostics that are not the product: our rule's decisions, but the model told a stopped
trial's values so far (as Ax's and Katib's contenders tell it), or nothing (the trial abandoned). They separate what
the decisions cost from what `verdict.projected` (what `Engine.early_stop` reports) does to the model.

Each (problem, contender, seed, mode) run is independent and goes to one of at most 2 worker processes (the
benchmark machine has 2 cores), each with one torch thread. N is 32 rather than 40 for time: 40 trials with 5 seeds
took 57 minutes on the 2 cores shared with other jobs, over the 45 minutes this benchmark may take; 32 took 24.

    .venv/bin/python bench/early_stopping.py           # 2 problems, 5 seeds, 32 trials of 20 steps
    .venv/bin/python bench/early_stopping.py --log /tmp/es.jsonl --resume   # the same, resumable if killed
    .venv/bin/python bench/early_stopping.py --quick   # digits NAS, 2 seeds, 12 trials of 8 steps (~1 min)
    .venv/bin/python bench/early_stopping.py --problems branincurrin --only none ours --variants --json /tmp/es.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import response

PARALLELISM = 4
MIN_PROGRESSION = 3
MIN_REFERENCE_TRIALS = 3  # ours; Katib's min_trials_required is 3 as well (its default)
BUDGET_FRACTION = 0.5
TRIAL_CAP_FACTOR = 3  # equal-compute runs launch at most this many times N trials
REFERENCE_STEPS = 20  # tau is given in steps of a 20-step curve and scaled with T
CONTENDERS = ("none", "ours", "Ax percentile", "Katib median")
# Diagnostics, only with --variants: our rule's decisions with other data for the model about a stopped trial, to
# tell apart what the decisions cost from what the model is told (engine.early_stop gets Verdict.projected).
VARIANTS = ("ours, observed to model", "ours, stopped abandoned")
MODES = ("trials", "compute")


# ------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Objective:
    metric: str
    minimize: bool
    threshold: float
    curve: bool  # a learning curve logged at every progression, or static: logged once at progression 0
    reduce: str = "last"  # how the final metric is read from the curve ("last", "max", "min"), as in the spec
    start: float = 0.0  # the untrained value every curve starts from
    noise: float = 0.0  # standard deviation of the noise on each logged point of a curve

    def maximized(self, value: float) -> float:
        return -value if self.minimize else value


@dataclass(frozen=True)
class CurveProblem:
    key: str
    name: str
    parameters: tuple[dict[str, Any], ...]  # the spec's parameter documents
    objectives: tuple[Objective, ...]
    final: Callable[[Mapping[str, Any]], dict[str, float]]  # the noise-free final values: the truth
    tau: Callable[[Mapping[str, Any]], float]  # the curve's time constant in steps of a REFERENCE_STEPS curve
    max_hv: float

    @property
    def reference(self) -> np.ndarray:
        return np.array([o.maximized(o.threshold) for o in self.objectives])

    def spec_document(self, seed: int, max_trials: int, initial_trials: int, projection: str) -> dict[str, Any]:
        return {
            "apiVersion": "nas.operator.dev/v1alpha1",
            "kind": "NASExperiment",
            "metadata": {"name": f"es-{self.key}"},
            "spec": {
                "parameters": [dict(p) for p in self.parameters],
                "objectives": [
                    {"metric": o.metric, "goal": "minimize" if o.minimize else "maximize", "threshold": o.threshold}
                    for o in self.objectives
                ],
                "metrics": {
                    "source": "tensorboard",
                    "definitions": [{"name": o.metric, "reduce": o.reduce} for o in self.objectives],
                },
                "earlyStopping": {
                    "progression": "step",
                    "minProgression": MIN_PROGRESSION,
                    "minReferenceTrials": MIN_REFERENCE_TRIALS,
                    "projection": projection,
                },
                "budget": {"maxTrials": max_trials, "parallelism": PARALLELISM},
                "algorithm": {"name": "auto", "initialTrials": initial_trials, "seed": seed},
                "trial": {"command": ["simulated"]},
            },
        }


def branin_currin(steps: int) -> CurveProblem:
    import torch
    from botorch.test_functions.multi_objective import BraninCurrin

    function = BraninCurrin()
    ref = [float(v) for v in function._ref_point]

    def final(p: Mapping[str, Any]) -> dict[str, float]:
        with torch.no_grad():
            y = function(torch.tensor([[float(p["x0"]), float(p["x1"])]], dtype=torch.double))[0]
        return {"f0": float(y[0]), "f1": float(y[1])}

    return CurveProblem(
        key="branincurrin",
        name="Branin-Currin (both objectives learning curves)",
        parameters=tuple({"name": f"x{i}", "type": "range", "lower": 0.0, "upper": 1.0} for i in range(2)),
        objectives=(
            Objective("f0", True, ref[0], curve=True, start=304.0, noise=0.01 * ref[0]),
            Objective("f1", True, ref[1], curve=True, start=13.8, noise=0.01 * ref[1]),
        ),
        final=final,
        tau=lambda p: 1.0 * 10.0 ** ((float(p["x0"]) + float(p["x1"])) / 2),
        max_hv=float(function.max_hv),
    )


NAS_ACC_THRESHOLD = 0.85
NAS_PARAMS_THRESHOLD = 12000.0


def nas_final(p: Mapping[str, Any], steps: int) -> dict[str, float]:
    metrics = response({**p, "epochs": steps})
    return {"val_acc": metrics["val_acc"], "num_params": metrics["num_params"]}


def nas_tau(p: Mapping[str, Any]) -> float:
    return (
        1.5
        * math.sqrt(0.01 / float(p["learning_rate"]))
        * math.sqrt(float(p["batch_size"]) / 32.0)
        * (1.0 + float(p["dropout"]))
    )


@cache
def nas_max_hv(steps: int) -> float:
    """Exact: the front over every integer width pair at the best learning rate (1e-2) and no dropout."""
    from nas_operator.search.pareto import hypervolume_of

    points = []
    for h1 in range(4, 129):
        for h2 in range(4, 129):
            m = nas_final({"hidden_size_1": h1, "hidden_size_2": h2, "learning_rate": 0.01, "dropout": 0.0}, steps)
            points.append((m["val_acc"], -m["num_params"]))
    front, best = [], -math.inf  # sweep by parameter count, fewest first: keep each new accuracy record
    for acc, neg_params in sorted(points, key=lambda q: (-q[1], -q[0])):
        if acc > best:
            front.append((acc, neg_params))
            best = acc
    return hypervolume_of(np.array(front), np.array([NAS_ACC_THRESHOLD, -NAS_PARAMS_THRESHOLD]))


def digits_nas(steps: int) -> CurveProblem:
    return CurveProblem(
        key="nas",
        name="digits NAS (val_acc a learning curve, num_params static)",
        parameters=(
            {"name": "hidden_size_1", "type": "range", "valueType": "int", "lower": 4, "upper": 128, "logScale": True},
            {"name": "hidden_size_2", "type": "range", "valueType": "int", "lower": 4, "upper": 128, "logScale": True},
            {"name": "learning_rate", "type": "range", "lower": 0.0001, "upper": 0.1, "logScale": True},
            {"name": "dropout", "type": "range", "lower": 0.0, "upper": 0.5},
            {"name": "batch_size", "type": "choice", "values": [16, 32, 64, 128], "ordered": True},
        ),
        objectives=(
            Objective("val_acc", False, NAS_ACC_THRESHOLD, curve=True, reduce="max", start=0.1, noise=0.005),
            Objective("num_params", True, NAS_PARAMS_THRESHOLD, curve=False),
        ),
        final=lambda p: nas_final(p, steps),
        tau=nas_tau,
        max_hv=nas_max_hv(steps),
    )


PROBLEMS: dict[str, Callable[[int], CurveProblem]] = {"branincurrin": branin_currin, "nas": digits_nas}


def curve_value(start: float, final: float, tau: float, t: int, steps: int) -> float:
    """The saturating curve at progression t: `start` at 0, `final` at `steps`."""
    gone = math.exp(-t / tau) - math.exp(-steps / tau)
    return final + (start - final) * gone / (1.0 - math.exp(-steps / tau))


# ------------------------------------------------------------------ simulated trials


@dataclass
class SimTrial:
    """One trial's training, one progression per tick; what it logged, and the truth it converges to."""

    index: int
    parameters: dict[str, Any]
    truth: dict[str, float]
    tau: float
    rng: np.random.Generator
    progression: int = 0
    raw: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # metric -> logged (progression, value)
    status: str = "running"

    def advance(self, problem: CurveProblem, steps: int) -> dict[str, float]:
        """Train one more step; returns the points logged at it."""
        self.progression += 1
        logged = {}
        for o in problem.objectives:
            if o.curve:
                clean = curve_value(o.start, self.truth[o.metric], self.tau, self.progression, steps)
                logged[o.metric] = clean + float(self.rng.normal(0.0, o.noise))
                self.raw[o.metric].append((float(self.progression), logged[o.metric]))
        return logged

    def curves(self, problem: CurveProblem) -> Any:
        from nas_operator.search.stopping_rule import MetricCurve, TrialCurves

        return TrialCurves(
            float(self.progression),
            {o.metric: MetricCurve.from_points(self.raw[o.metric], o.reduce) for o in problem.objectives},
        )

    def reported(self, problem: CurveProblem) -> dict[str, float]:
        """Each metric's curve reduced as the spec says: what the loop records when the trial ends now."""
        values = {}
        for o in problem.objectives:
            points = [v for _, v in self.raw[o.metric]]
            values[o.metric] = max(points) if o.reduce == "max" else min(points) if o.reduce == "min" else points[-1]
        return values


def start_trial(problem: CurveProblem, index: int, parameters: dict[str, Any], seed: int, steps: int) -> SimTrial:
    """A trial's truth, its curve's time constant (scaled so that curves keep their shape whatever T) and its noise,
    seeded by (seed, index) so that the same trial slot gets the same noise under every policy."""
    truth = problem.final(parameters)
    tau = problem.tau(parameters) * steps / REFERENCE_STEPS
    trial = SimTrial(index, parameters, truth, tau, np.random.default_rng([seed, index]))
    for o in problem.objectives:
        trial.raw[o.metric] = [] if o.curve else [(0.0, truth[o.metric])]
    return trial


# ------------------------------------------------------------------ policies


class Policy:
    """No stopping. The hooks are where the other policies see the training and tell the optimizer."""

    def __init__(self, problem: CurveProblem, spec: Any, engine: Any, steps: int) -> None:
        self.problem, self.spec, self.engine, self.steps = problem, spec, engine, steps

    def launched(self, trial: SimTrial) -> None:
        pass

    def logged(self, trial: SimTrial, points: Mapping[str, float]) -> None:
        pass

    def complete(self, trial: SimTrial) -> None:
        self.engine.complete(trial.index, trial.reported(self.problem))

    def decide(self, running: Sequence[SimTrial], completed: Sequence[SimTrial]) -> list[SimTrial]:
        return []


class OursPolicy(Policy):
    """Our multi-objective rule, judged at every tick; a stopped trial goes to the model as the loop sends it
    (core/loop.py: `engine.early_stop(index, verdict.projected)`)."""

    def decide(self, running: Sequence[SimTrial], completed: Sequence[SimTrial]) -> list[SimTrial]:
        from nas_operator.search.stopping_rule import Reference, judge

        if len(completed) < MIN_REFERENCE_TRIALS:
            return []
        references = [Reference(t.index, t.curves(self.problem), t.reported(self.problem)) for t in completed]
        measured = {t.index: t.reported(self.problem) for t in completed}
        stopped = []
        for trial in running:
            verdict = judge(self.spec, self.spec.early_stopping, trial.curves(self.problem), references, measured)
            if verdict.stop:
                self.tell(trial, verdict)
                stopped.append(trial)
        return stopped

    def tell(self, trial: SimTrial, verdict: Any) -> None:
        self.engine.early_stop(trial.index, verdict.projected)


class OursObservedPolicy(OursPolicy):
    """Diagnostic variant (not the product): our rule's decisions, the model told the values measured so far."""

    def tell(self, trial: SimTrial, verdict: Any) -> None:
        self.engine.early_stop(trial.index, verdict.observed)


class OursAbandonedPolicy(OursPolicy):
    """Diagnostic variant (not the product): our rule's decisions, a stopped trial abandoned (no data to the model)."""

    def tell(self, trial: SimTrial, verdict: Any) -> None:
        self.engine.abandon(trial.index)


class AxPercentilePolicy(Policy):
    """Ax's PercentileEarlyStoppingStrategy through Ax's Client, on the Engine's own Ax experiment."""

    def __init__(self, problem: CurveProblem, spec: Any, engine: Any, steps: int) -> None:
        from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy

        super().__init__(problem, spec, engine, steps)
        self.client = engine.client
        # Its defaults (percentile_threshold=50, min_curves=5, first objective), our minimum progression.
        self.client.set_early_stopping_strategy(PercentileEarlyStoppingStrategy(min_progression=MIN_PROGRESSION))

    def launched(self, trial: SimTrial) -> None:
        static = {o.metric: trial.truth[o.metric] for o in self.problem.objectives if not o.curve}
        if static:
            self.client.attach_data(trial_index=trial.index, raw_data=static, progression=0)

    def logged(self, trial: SimTrial, points: Mapping[str, float]) -> None:
        self.client.attach_data(trial_index=trial.index, raw_data=dict(points), progression=trial.progression)

    def complete(self, trial: SimTrial) -> None:
        reported = trial.reported(self.problem)
        final = {o.metric: reported[o.metric] for o in self.problem.objectives if o.curve}
        self.client.complete_trial(trial_index=trial.index, raw_data=final, progression=trial.progression)

    def decide(self, running: Sequence[SimTrial], completed: Sequence[SimTrial]) -> list[SimTrial]:
        stopped = []
        for trial in running:
            if self.client.should_stop_trial_early(trial_index=trial.index):
                self.client.mark_trial_early_stopped(trial_index=trial.index)  # its data: the last logged points
                stopped.append(trial)
        return stopped


def katib_median_stop(
    values: Sequence[float], completed: Sequence[Sequence[float]], minimize: bool, start_step: int, min_trials: int
) -> bool:
    """Katib's median stopping rule, as documented (kubeflow.org/docs/components/katib/user-guides/early-stopping,
    "Median Stopping Rule"; it is the rule of Google Vizier, Golovin et al. 2017): once `min_trials` trials have
    succeeded, a running trial is stopped at step S >= `start_step` if its best objective value by step S is strictly
    worse than the median of the completed trials' running averages of the objective up to step S.

    `values[s - 1]` is the trial's objective at step s (one value per step), likewise each of `completed`. Katib is Go
    and Python services behind gRPC, so this is a re-implementation. Its service (pkg/earlystopping/v1beta1/medianstop/
    service.py) differs from its documentation: it compares with the *mean* over succeeded trials of their average of
    the first `start_step` values, fixed when the trial's rules are made; we follow the documented rule.
    """
    s = len(values)
    if s < start_step or len(completed) < min_trials:
        return False
    best = min(values) if minimize else max(values)
    median = statistics.median(statistics.fmean(curve[:s]) for curve in completed)
    return best > median if minimize else best < median


class KatibMedianPolicy(Policy):
    """Katib's median stopping rule on the first objective; a stopped trial's values so far go to the model."""

    def decide(self, running: Sequence[SimTrial], completed: Sequence[SimTrial]) -> list[SimTrial]:
        first = self.problem.objectives[0]
        history = [[v for _, v in t.raw[first.metric]] for t in completed]
        stopped = []
        for trial in running:
            values = [v for _, v in trial.raw[first.metric]]
            if katib_median_stop(values, history, first.minimize, MIN_PROGRESSION, MIN_REFERENCE_TRIALS):
                self.engine.early_stop(trial.index, trial.reported(self.problem))
                stopped.append(trial)
        return stopped


POLICIES: dict[str, type[Policy]] = {
    "none": Policy,
    "ours": OursPolicy,
    "Ax percentile": AxPercentilePolicy,
    "Katib median": KatibMedianPolicy,
    "ours, observed to model": OursObservedPolicy,
    "ours, stopped abandoned": OursAbandonedPolicy,
}


# ------------------------------------------------------------------ one run


@dataclass(frozen=True)
class Settings:
    trials: int
    steps: int
    initial_trials: int
    budget_fraction: float
    projection: str = "gain"  # ours: spec.earlyStopping.projection

    @property
    def budget(self) -> int:
        """The equal-compute budget in steps: a fraction of no stopping's compute at `trials` trials."""
        return round(self.budget_fraction * self.trials * self.steps)


@dataclass(frozen=True)
class Unit:
    problem: str
    contender: str
    seed: int
    mode: str  # "trials": N trials; "compute": launch while the budget allows


@dataclass(frozen=True)
class TrialRecord:
    index: int
    status: str  # completed, stopped
    progression: int
    truth: list[float]  # noise-free finals in maximisation space, in the problem's objective order


@dataclass(frozen=True)
class RunResult:
    unit: Unit
    compute: int
    launched: int
    completed: int
    stopped: int
    lost: int  # stopped trials whose true final would have added hypervolume to the completed trials' front
    regret: float
    seconds: float
    trials: list[TrialRecord]


def hypervolume(problem: CurveProblem, points: Sequence[Sequence[float]]) -> float:
    from nas_operator.search.pareto import hypervolume_of

    if not points:
        return 0.0
    return hypervolume_of(np.array(points, dtype=float), problem.reference)


def log_regret(problem: CurveProblem, points: Sequence[Sequence[float]]) -> float:
    return math.log10(max(problem.max_hv - hypervolume(problem, points), 1e-12))


def adds_hypervolume(problem: CurveProblem, point: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """Whether `point` (maximisation) is above the reference point and not weakly dominated by any of `front`."""
    if not all(p > r for p, r in zip(point, problem.reference, strict=True)):
        return False
    return not any(all(f >= p for f, p in zip(other, point, strict=True)) for other in front)


def summarize(problem: CurveProblem, unit: Unit, records: list[TrialRecord], seconds: float) -> RunResult:
    front = [r.truth for r in records if r.status == "completed"]
    stopped = [r for r in records if r.status == "stopped"]
    return RunResult(
        unit=unit,
        compute=sum(r.progression for r in records),
        launched=len(records),
        completed=len(front),
        stopped=len(stopped),
        lost=sum(adds_hypervolume(problem, r.truth, front) for r in stopped),
        regret=log_regret(problem, front),
        seconds=seconds,
        trials=records,
    )


def simulate(unit: Unit, settings: Settings) -> RunResult:
    """One contender on one (problem, seed): launch, tick, complete, stop, refill, until trials or budget run out."""
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import Engine

    started = time.perf_counter()
    steps = settings.steps
    problem = PROBLEMS[unit.problem](steps)
    by_trials = unit.mode == "trials"
    max_trials = settings.trials if by_trials else TRIAL_CAP_FACTOR * settings.trials
    budget = None if by_trials else settings.budget
    spec = load_experiment(
        problem.spec_document(unit.seed, max_trials, settings.initial_trials, settings.projection), cluster=False
    ).spec
    engine = Engine.create(spec, f"es-{unit.problem}")
    policy = POLICIES[unit.contender](problem, spec, engine, steps)
    trials: list[SimTrial] = []
    running: list[SimTrial] = []
    completed: list[SimTrial] = []
    spent = 0
    while True:
        allowed = min(PARALLELISM - len(running), max_trials - len(trials))
        if budget is not None:  # launch only what can finish: the running trials' remaining steps stay reserved
            reserved = spent + sum(steps - t.progression for t in running)
            allowed = min(allowed, (budget - reserved) // steps)
        if allowed > 0:
            for candidate in engine.generate(allowed):
                trial = start_trial(problem, candidate.index, dict(candidate.parameters), unit.seed, steps)
                policy.launched(trial)
                trials.append(trial)
                running.append(trial)
        if not running:
            break
        for trial in running:
            points = trial.advance(problem, steps)
            spent += 1
            policy.logged(trial, points)
        for trial in [t for t in running if t.progression >= steps]:
            trial.status = "completed"
            policy.complete(trial)
            running.remove(trial)
            completed.append(trial)
        for trial in policy.decide(running, completed):
            trial.status = "stopped"
            running.remove(trial)
    records = [
        TrialRecord(t.index, t.status, t.progression, [o.maximized(t.truth[o.metric]) for o in problem.objectives])
        for t in trials
    ]
    return summarize(problem, unit, records, time.perf_counter() - started)


def none_at_budget(result: RunResult, settings: Settings) -> RunResult:
    """No stopping under the equal-compute budget: the first B // T trials of its N-trial run, exactly what a
    budgeted run would launch (every trial takes T steps, so the trials start in the same waves, same history)."""
    problem = PROBLEMS[result.unit.problem](settings.steps)
    first = sorted(result.trials, key=lambda r: r.index)[: settings.budget // settings.steps]
    unit = Unit(result.unit.problem, result.unit.contender, result.unit.seed, "compute")
    return summarize(problem, unit, first, 0.0)


# ------------------------------------------------------------------ running and reporting


def start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(logging.ERROR)  # Ax's per-trial lines and its constant-outcome warnings


def run_unit(unit: Unit, settings: Settings) -> RunResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate(unit, settings)


COST = {"none": 1.0, "Ax percentile": 1.6}  # rough; only the order depends on it


def run_units(units: list[Unit], settings: Settings, jobs: int) -> Iterator[RunResult]:
    """The runs' results as they come, `jobs` at a time in spawned worker processes (torch does not survive fork)."""
    ordered = sorted(
        units, key=lambda u: (u.problem, -COST.get(u.contender, 1.3) * (1.0 if u.mode == "trials" else 1.1))
    )
    if jobs <= 1:
        start_worker()
        for unit in ordered:
            yield run_unit(unit, settings)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=start_worker) as pool:
        futures = [pool.submit(run_unit, unit, settings) for unit in ordered]
        for future in as_completed(futures):
            yield future.result()


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def shown(values: Sequence[float], digits: int = 3) -> str:
    mean, se = mean_se(values)
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def regret_ratio(ours: Sequence[RunResult], theirs: Sequence[RunResult]) -> str:
    """Ratio of mean (linear) regrets, ours / theirs: below 1 ours is better."""
    mine, peer = statistics.fmean(10**r.regret for r in ours), statistics.fmean(10**r.regret for r in theirs)
    return f"{mine / peer:.2f}" if peer > 0 else "-"


def by_contender(runs: Sequence[RunResult], mode: str) -> dict[str, list[RunResult]]:
    table: dict[str, list[RunResult]] = {}
    for name in CONTENDERS + VARIANTS:
        mine = sorted((r for r in runs if r.unit.contender == name and r.unit.mode == mode), key=lambda r: r.unit.seed)
        if mine:
            table[name] = mine
    return table


def print_tables(problem: CurveProblem, runs: Sequence[RunResult], settings: Settings, seeds: int) -> None:
    n, steps = settings.trials, settings.steps
    print(
        f"\n### {problem.name}\n\n{n} trials of {steps} steps, parallelism {PARALLELISM}, seeds 0-{seeds - 1}; "
        "mean ± standard error over seeds; regret is log10(max HV - HV) of the completed trials' true finals "
        "(lower is better); ours / this: ratio of mean compute and of mean linear regret (below 1: ours lower)\n"
    )
    rows = by_contender(runs, "trials")
    if rows:
        print_trials_table(rows, settings)
    rows = by_contender(runs, "compute")
    if rows:
        print_compute_table(rows, settings)


def print_trials_table(rows: Mapping[str, list[RunResult]], settings: Settings) -> None:
    none_compute = statistics.fmean(r.compute for r in rows["none"]) if "none" in rows else float("nan")
    ours = rows.get("ours")
    print(
        "| contender | training compute (steps) | compute / none | trials stopped | stopped that would have added HV "
        "| log10 HV regret | ours / this: compute | ours / this: regret | s per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, mine in rows.items():
        compute = statistics.fmean(r.compute for r in mine)
        peer = name != "ours" and ours is not None
        compute_ratio = f"{statistics.fmean(r.compute for r in ours) / compute:.2f}" if peer and ours else "-"
        print(
            f"| {name} | {shown([r.compute for r in mine], 0)} | {compute / none_compute:.2f} "
            f"| {shown([r.stopped for r in mine], 1)} | {shown([r.lost for r in mine], 1)} "
            f"| {shown([r.regret for r in mine])} | {compute_ratio} "
            f"| {regret_ratio(ours, mine) if peer and ours else '-'} "
            f"| {statistics.fmean(r.seconds for r in mine):.0f} |"
        )


def print_compute_table(rows: Mapping[str, list[RunResult]], settings: Settings) -> None:
    n, budget = settings.trials, settings.budget
    print(
        f"\nEqual compute: {budget} steps for every policy ({settings.budget_fraction:.0%} of no stopping's at {n} "
        f"trials), trials launched (at most {TRIAL_CAP_FACTOR * n}) while the running ones could still finish within "
        "it; none's row is the first budget / T trials of its run above\n"
    )
    ours = rows.get("ours")
    print(
        "| contender | trials launched | trials completed | trials stopped | compute used (steps) | log10 HV regret "
        "| ours / this: regret |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, mine in rows.items():
        peer = name != "ours" and ours is not None
        print(
            f"| {name} | {shown([r.launched for r in mine], 1)} | {shown([r.completed for r in mine], 1)} "
            f"| {shown([r.stopped for r in mine], 1)} | {shown([r.compute for r in mine], 0)} "
            f"| {shown([r.regret for r in mine])} | {regret_ratio(ours, mine) if peer and ours else '-'} |",
            flush=True,
        )


def targets(problem: CurveProblem, runs: Sequence[RunResult]) -> list[str]:
    """The issue's two targets for one problem, each as a line that says met or not, with its numbers."""
    lines = []
    rows, equal = by_contender(runs, "trials"), by_contender(runs, "compute")
    if "ours" in rows and "none" in rows:
        fraction = statistics.fmean(r.compute for r in rows["ours"]) / statistics.fmean(r.compute for r in rows["none"])
        ours_mean, ours_se = mean_se([r.regret for r in rows["ours"]])
        none_mean, none_se = mean_se([r.regret for r in rows["none"]])
        allowed = none_mean + (0.0 if math.isnan(none_se) else none_se)
        met = fraction <= 0.65 and ours_mean <= allowed
        lines.append(
            f"- {problem.name}, target 1 (≥35% less compute than none, regret ≤ none's mean + 1 SE): "
            f"{'MET' if met else 'NOT MET'}: ours used {fraction:.0%} of none's compute "
            f"({'≤' if fraction <= 0.65 else '>'} 65%), log10 regret {ours_mean:.3f} ± {ours_se:.3f} vs none "
            f"{none_mean:.3f} ± {none_se:.3f} (allowed ≤ {allowed:.3f})"
        )
    if "ours" in equal and "Ax percentile" in equal:
        ours_mean, ours_se = mean_se([r.regret for r in equal["ours"]])
        ax_mean, ax_se = mean_se([r.regret for r in equal["Ax percentile"]])
        met = ours_mean < ax_mean
        close = abs(ours_mean - ax_mean) <= max(ours_se, ax_se)  # NaN with one seed: never "close"
        lines.append(
            f"- {problem.name}, target 2 (better final HV than Ax's percentile rule at equal compute): "
            f"{'MET' if met else 'NOT MET'}: log10 regret ours {ours_mean:.3f} ± {ours_se:.3f} vs Ax percentile "
            f"{ax_mean:.3f} ± {ax_se:.3f}{' (the difference is within one standard error)' if close else ''}"
        )
    return lines


def logged_runs(path: Path, version: str, settings: Settings, units: Sequence[Unit]) -> list[RunResult]:
    """The runs `--log` recorded with the same code and settings, for `--resume`: on a shared machine a long run can
    be killed, and its finished runs need not be run again."""
    if not path.exists():
        return []
    runs: dict[Unit, RunResult] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when the run was killed
        # the commit may have moved on (this repository's other files change often); the rule and engine may not
        same_code = str(entry.get("code", "")).partition("sha256 ")[2] == version.partition("sha256 ")[2]
        if not same_code or entry.get("settings") != asdict(settings):
            continue
        run = dict(entry["run"])
        unit = Unit(**run.pop("unit"))
        if unit in units:
            runs[unit] = RunResult(unit=unit, trials=[TrialRecord(**t) for t in run.pop("trials")], **run)
    return list(runs.values())


def code_version() -> str:
    """The commit and the rule's and engine's file digests: both change often, and a table is only as good as the
    code it measured (a worker imports them once, at its first run)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    search = root / "operator" / "nas_operator" / "search"
    digests = ", ".join(
        f"{name} {hashlib.sha256((search / name).read_bytes()).hexdigest()[:12]}"
        for name in ("stopping_rule.py", "engine.py")
    )
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "operator/nas_operator/search"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return f"commit {head}{' (search/ modified)' if dirty else ''}; sha256 {digests}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=32, help="N, the trial budget (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="T, progression steps per trial (default 20)")
    parser.add_argument("--budget-fraction", type=float, default=BUDGET_FRACTION)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS + VARIANTS, help="run only these contenders")
    parser.add_argument(
        "--variants", action="store_true", help="add the diagnostic variants of ours: " + ", ".join(VARIANTS)
    )
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="N trials, equal compute, or both (default)"
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (at most 2)")
    parser.add_argument("--json", type=Path, help="also write every run's result here")
    parser.add_argument("--log", type=Path, help="append each run's result here as it finishes (JSON lines)")
    parser.add_argument("--resume", action="store_true", help="skip the runs --log holds for this code and settings")
    parser.add_argument(
        "--projection",
        choices=["gain", "relative"],
        default=os.environ.get("NAS_BENCH_PROJECTION", "gain"),
        help="ours: spec.earlyStopping.projection (default gain, the spec's default)",
    )
    parser.add_argument("--quick", action="store_true", help="digits NAS, 2 seeds, 12 trials of 8 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.seeds, args.trials, args.steps = ["nas"], 2, 12, 8
    wanted = set(args.only or CONTENDERS) | (set(VARIANTS) if args.variants else set())
    contenders = [c for c in CONTENDERS + VARIANTS if c in wanted]
    initial = 8 if args.trials >= 30 else max(4, args.trials // 3)  # Sobol trials (with the center) before qLogNEHVI
    settings = Settings(args.trials, args.steps, initial, args.budget_fraction, args.projection)
    jobs = max(1, min(args.jobs, 2))
    version = code_version()
    print(
        f"early stopping: {args.trials} trials of {args.steps} steps, {settings.initial_trials} initial, parallelism "
        f"{PARALLELISM}, min progression {MIN_PROGRESSION}, seeds 0-{args.seeds - 1}, equal-compute budget "
        f"{settings.budget} steps, ours with projection {settings.projection}; {jobs} worker process(es); "
        f"{version}",
        flush=True,
    )
    units = [
        Unit(p, c, s, mode)
        for p in args.problems
        for c in contenders
        for mode in args.modes
        if not (c == "none" and mode == "compute")
        for s in range(args.seeds)
    ]
    expected = {p: sum(u.problem == p for u in units) for p in args.problems}
    received = dict.fromkeys(args.problems, 0)
    done: dict[str, list[RunResult]] = {p: [] for p in args.problems}
    started = time.perf_counter()
    logged = logged_runs(args.log, version, settings, units) if args.log and args.resume else []
    if logged:
        print(f"({len(logged)} run(s) taken from {args.log})", flush=True)
    resumed = {r.unit for r in logged}
    fresh = run_units([u for u in units if u not in resumed], settings, jobs)
    for count, result in enumerate(itertools.chain(logged, fresh), start=1):
        u = result.unit
        print(
            f"   [{count}/{len(units)}] {u.problem} {u.contender} seed {u.seed} ({u.mode}): compute {result.compute}, "
            f"stopped {result.stopped}, regret {result.regret:.3f} ({result.seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        if args.log and u not in resumed:
            with args.log.open("a") as log:
                log.write(json.dumps({"code": version, "settings": asdict(settings), "run": asdict(result)}) + "\n")
        done[u.problem].append(result)
        if u.contender == "none" and u.mode == "trials" and "compute" in args.modes:
            done[u.problem].append(none_at_budget(result, settings))
        received[u.problem] += 1
        if received[u.problem] == expected[u.problem]:
            print_tables(PROBLEMS[u.problem](args.steps), done[u.problem], settings, args.seeds)
            print(f"\n({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
    print("\n## Targets\n")
    for key in args.problems:
        for line in targets(PROBLEMS[key](args.steps), done[key]):
            print(line)
    print(f"\nwall time: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if args.json:
        payload = {
            "code": version,
            "settings": asdict(settings) | {"budget": settings.budget, "seeds": args.seeds},
            "runs": [asdict(r) for runs in done.values() for r in runs],
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
