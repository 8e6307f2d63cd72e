"""Stage 2 of a two-stage search (spec.fullTraining): which candidates, and what their full trainings say.

The two-stage NAS guide (shared/reference) searches on a cheap proxy task, then trains the top ~10
candidates in full, because the best proxy model is often not the best fully trained one. For a
Pareto front "the top" is not one ranking, so candidates are taken the way non-dominated sorting
ranks them: the proxy front first, then the front of what is left, and so on, each layer in the
order of its first objective, until `candidates` are chosen. Only trials inside every threshold and
constraint qualify: the rest are not candidates on the proxy already.

What a person needs to judge the proxy is how well it ranked the candidates: Kendall's tau between
proxy and full metrics per objective (1: the same order; 0: unrelated), the measure the guide asks
users to check. The final front is the non-dominated set of the full-training metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.resource.spec import FullTrainingStatus, NASExperimentSpec, ParetoPoint
from nas_operator.search.pareto import feasible, hypervolume, non_dominated, pareto_indices

# Below this many candidates with both results, no rank correlation is reported (tau over 2 points is +-1).
MIN_CORRELATION_PAIRS = 3


def full_trial_name(experiment: str, index: int) -> str:
    """Stage 2's Job and directory name: apart from the search trial's <experiment>-t<index>."""
    return f"{experiment}-f{index}"


def select_candidates(spec: NASExperimentSpec, results: Mapping[int, Mapping[str, float]], limit: int) -> list[int]:
    """Up to `limit` feasible search trials, proxy front first, then each next non-dominated layer."""
    signs = np.array([-1.0 if o.minimize else 1.0 for o in spec.objectives])
    left = [i for i, metrics in results.items() if feasible(spec, metrics)]
    chosen: list[int] = []
    while left and len(chosen) < limit:
        points = np.array([[results[i][o.metric] for o in spec.objectives] for i in left], dtype=float) * signs
        mask = non_dominated(points)
        layer = sorted((i for k, i in enumerate(left) if mask[k]), key=lambda i: (-points[left.index(i), 0], i))
        chosen += layer[: limit - len(chosen)]
        left = [i for k, i in enumerate(left) if not mask[k]]
    return chosen


def kendall_tau(proxy: list[float], full: list[float]) -> float | None:
    """Kendall's tau-b (ties counted as SciPy does); None when undefined (too few pairs, or one side constant)."""
    if len(proxy) < MIN_CORRELATION_PAIRS:
        return None
    from scipy.stats import kendalltau

    tau = float(kendalltau(proxy, full).statistic)
    return None if math.isnan(tau) else round(tau, 4)


def rank_correlation(spec: NASExperimentSpec, state: LoopState) -> dict[str, float]:
    """Per objective, Kendall's tau between each candidate's proxy value and its full-training value."""
    pairs = [
        (state.trials[index].metrics, full.metrics)
        for index, full in sorted(state.full_trials.items())
        if full.status == "succeeded" and index in state.trials
    ]
    taus = {}
    for objective in spec.objectives:
        metric = objective.metric
        usable = [(p[metric], f[metric]) for p, f in pairs if metric in p and metric in f]
        tau = kendall_tau([p for p, _ in usable], [f for _, f in usable])
        if tau is not None:
            taus[metric] = tau
    return taus


def low_correlations(spec: NASExperimentSpec, taus: Mapping[str, float]) -> dict[str, float]:
    """The objectives whose proxy ranked the candidates worse than spec.fullTraining.minRankCorrelation."""
    if spec.full_training is None:
        return {}
    return {metric: tau for metric, tau in taus.items() if tau < spec.full_training.min_rank_correlation}


def _point(record: TrialRecord) -> ParetoPoint:
    return ParetoPoint(trial=record.name, index=record.index, parameters=record.parameters, metrics=record.metrics)


def full_training_status(spec: NASExperimentSpec, state: LoopState) -> FullTrainingStatus | None:
    if spec.full_training is None and not state.full_trials:
        return None
    records = state.full_trials
    results = {i: t.metrics for i, t in records.items() if t.status == "succeeded"}
    front = [_point(records[i]) for i in pareto_indices(spec, results)]
    single = len(spec.objectives) == 1
    return FullTrainingStatus(
        candidates=len(records),
        pending=sum(1 for t in records.values() if t.status in ("queued", "launching")),
        running=sum(1 for t in records.values() if t.status == "running"),
        succeeded=len(results),
        failed=sum(1 for t in records.values() if t.status in ("failed", "stopped")),
        pareto_front=[] if single else front,
        pareto_size=0 if single else len(front),
        hypervolume=hypervolume(spec, results) if results and not single else None,
        best_trial=front[0] if single and front else None,
        rank_correlation=rank_correlation(spec, state),
    )
