"""What the dashboard's pages show, as plain JSON documents built from a spec and a trial table.

Everything here is computed from the loop's own record (LoopState), the same source `kubectl get
nasx`, `pareto.json` and `trials.csv` come from, so the page never disagrees with them. The one
costly part is the hypervolume over trials: it is computed incrementally (the front only changes
when a new point is not dominated), exactly by slicing (hypervolume.py), against the reference point
of all results, so the curve's last value is the status's hypervolume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas_operator.core.state import LoopState
from nas_operator.dashboard.hypervolume import exact_hypervolume
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.search.pareto import feasible, pareto_indices, reference_point


@dataclass(frozen=True)
class Loaded:
    """One experiment as a data source read it: its spec and trial table (None when it cannot be read here)."""

    key: str
    name: str
    where: str  # a directory or namespace, shown to the user
    spec: NASExperimentSpec | None
    state: LoopState | None
    engine: dict[str, Any] | None
    version: str  # changes whenever anything shown may have changed
    created_at: float | None = None
    status: dict[str, Any] | None = None  # a cluster object's status, for when its state is not readable here
    problem: str = ""  # why the state cannot be shown (SQL storage, no permission, unreadable file)
    curves: bool = False  # whether the trials' TensorBoard logs can be read from this machine


def _maximized(spec: NASExperimentSpec, rows: list[dict[str, float]]) -> np.ndarray:
    """Objective values signed so that larger is better (the space pareto.py's reference point lives in)."""
    signs = np.array([-1.0 if o.minimize else 1.0 for o in spec.objectives])
    values = np.array([[row[o.metric] for o in spec.objectives] for row in rows], dtype=float)
    matrix: np.ndarray = values.reshape(len(rows), len(spec.objectives)) * signs
    return matrix


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summary(item: Loaded, now: float | None = None) -> dict[str, Any]:
    """A row of the experiments list: phase, progress, hypervolume, front size, age."""
    return with_age(_summary(item), item, now)


def with_age(row: dict[str, Any], item: Loaded, now: float | None = None) -> dict[str, Any]:
    """The row with its age now (the rest of a row changes only with the experiment's version)."""
    started = item.state.started_at if item.state is not None and item.state.started_at else item.created_at
    now = time.time() if now is None else now
    return {**row, "ageSeconds": None if started is None else max(0.0, now - started)}


def _summary(item: Loaded) -> dict[str, Any]:
    row: dict[str, Any] = {"key": item.key, "name": item.name, "where": item.where, "problem": item.problem}
    if item.state is not None and item.spec is not None:
        state, spec = item.state, item.spec
        results = state.results()
        front = pareto_indices(spec, results)
        row.update(
            phase=state.phase,
            reason=state.reason,
            launched=state.launched,
            budget=spec.budget.max_trials,
            succeeded=state.count("succeeded"),
            failed=state.count("failed"),
            earlyStopped=state.count("earlyStopped"),
            running=state.count("running", "launching"),
            hypervolume=_finite(_hypervolume(spec, results, front)),
            frontSize=len(front),
        )
    else:
        status = item.status or {}
        trials = status.get("trials") or {}
        row.update(
            phase=status.get("phase", "Pending"),
            reason=status.get("reason", ""),
            launched=trials.get("total", 0),
            budget=item.spec.budget.max_trials if item.spec is not None else None,
            succeeded=trials.get("succeeded", 0),
            failed=trials.get("failed", 0),
            earlyStopped=trials.get("earlyStopped", 0),
            running=trials.get("running", 0),
            hypervolume=status.get("hypervolume"),
            frontSize=status.get("paretoSize", 0),
        )
    return row


def _hypervolume(spec: NASExperimentSpec, results: dict[int, dict[str, float]], front: list[int]) -> float | None:
    reference = reference_point(spec, results)
    if not front or reference is None:
        return None
    return exact_hypervolume(_maximized(spec, [results[i] for i in front]), reference)


def hypervolume_trace(spec: NASExperimentSpec, state: LoopState) -> list[dict[str, float]]:
    """Hypervolume of the results of trials 0..i, for every succeeded trial i, against the final reference point."""
    results = state.results()
    reference = reference_point(spec, results)
    if reference is None:
        return []
    trace: list[dict[str, float]] = []
    front = np.empty((0, len(spec.objectives)))
    volume = 0.0
    for index in sorted(results):
        metrics = results[index]
        if feasible(spec, metrics):
            point = _maximized(spec, [metrics])[0]
            dominated = bool(len(front)) and bool(np.any(np.all(front >= point, axis=1)))
            if not dominated:
                keep = ~(np.all(point >= front, axis=1) & np.any(point > front, axis=1))
                front = np.vstack([front[keep], point])
                volume = exact_hypervolume(front, reference)
        trace.append({"index": index, "hypervolume": volume})
    return trace


def detail(item: Loaded, row: dict[str, Any] | None = None) -> dict[str, Any]:
    """One experiment's page: objectives, every trial (with its place on the front), hypervolume over trials."""
    document: dict[str, Any] = {"summary": row or summary(item), "version": item.version, "curves": item.curves}
    if item.spec is None or item.state is None:
        return {**document, "objectives": [], "parameters": [], "metrics": [], "trials": [], "hypervolumeTrace": []}
    spec, state = item.spec, item.state
    results = state.results()
    front = set(pareto_indices(spec, results))
    metrics = sorted({m for t in state.trials.values() for m in t.metrics})
    trials = []
    for index, trial in sorted(state.trials.items()):
        trials.append(
            {
                "index": index,
                "name": trial.name,
                "status": trial.status,
                "reason": trial.reason[:2000],
                "generator": trial.generator,
                "attempt": trial.attempt,
                "duration": trial.duration,
                "startedAt": trial.started_at,
                "parameters": trial.parameters,
                "metrics": {k: _finite(v) for k, v in trial.metrics.items()},
                "front": index in front,
                "feasible": trial.status == "succeeded" and feasible(spec, trial.metrics),
            }
        )
    return {
        **document,
        "message": state.message,
        "objectives": [o.model_dump(mode="json") for o in spec.objectives],
        "outcomeConstraints": list(spec.outcome_constraints),
        "parameters": [p.name for p in spec.parameters],
        "metrics": metrics,
        "trials": trials,
        "hypervolumeTrace": hypervolume_trace(spec, state),
        "diagnostics": item.engine is not None,
    }
