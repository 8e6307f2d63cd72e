"""The observed Pareto front and its hypervolume, from completed trials' metrics.

Computed from observations, not model predictions: what a user reads in the status is what
their trials measured. A trial is feasible when it meets every outcome constraint; it counts
towards the front and the hypervolume only if it is also better than every objective
threshold (the reference point). Objectives without a threshold use the worst feasible
observation as their reference, which keeps the hypervolume defined but makes it depend on
the data, so give thresholds when comparing experiments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import parse_outcome_constraint


def feasible(spec: NASExperimentSpec, metrics: Mapping[str, float]) -> bool:
    """Meets the outcome constraints and every objective threshold."""
    for text in spec.outcome_constraints:
        c = parse_outcome_constraint(text)
        value = metrics.get(c.metric)
        if value is None or not math.isfinite(value):
            return False
        if (c.op == "<=" and value > c.bound) or (c.op == ">=" and value < c.bound):
            return False
    for o in spec.objectives:
        value = metrics.get(o.metric)
        if value is None or not math.isfinite(value):
            return False
        if o.threshold is not None and (
            (o.minimize and value > o.threshold) or (not o.minimize and value < o.threshold)
        ):
            return False
    return True


def _maximization_matrix(spec: NASExperimentSpec, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Objective values with signs flipped so that larger is better for all columns."""
    signs = np.array([-1.0 if o.minimize else 1.0 for o in spec.objectives])
    values = np.array([[row[o.metric] for o in spec.objectives] for row in rows], dtype=float)
    matrix: np.ndarray = values.reshape(len(rows), len(spec.objectives)) * signs
    return matrix


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Mask of rows not dominated by any other row (maximization; duplicates all kept)."""
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better_or_equal = np.all(points >= points[i], axis=1)
        strictly_better = np.any(points > points[i], axis=1)
        if np.any(better_or_equal & strictly_better):
            mask[i] = False
    return mask


def pareto_indices(spec: NASExperimentSpec, results: Mapping[int, Mapping[str, float]]) -> list[int]:
    """Trial indices on the observed Pareto front, ordered by the first objective (best first)."""
    indices = [i for i, m in results.items() if feasible(spec, m)]
    if not indices:
        return []
    points = _maximization_matrix(spec, [results[i] for i in indices])
    mask = non_dominated(points)
    front = [(points[k, 0], i) for k, i in enumerate(indices) if mask[k]]
    return [i for _, i in sorted(front, key=lambda t: (-t[0], t[1]))]


def reference_point(spec: NASExperimentSpec, results: Mapping[int, Mapping[str, float]]) -> np.ndarray | None:
    """The reference point in maximization space; None when it cannot be defined yet."""
    rows = [m for m in results.values() if feasible(spec, m)]
    reference = []
    for k, o in enumerate(spec.objectives):
        if o.threshold is not None:
            reference.append(-o.threshold if o.minimize else o.threshold)
        elif rows:
            reference.append(float(_maximization_matrix(spec, rows)[:, k].min()))
        else:
            return None
    return np.array(reference)


def hypervolume(spec: NASExperimentSpec, results: Mapping[int, Mapping[str, float]]) -> float:
    """Hypervolume dominated by the feasible observations above the reference point (0.0 if none)."""
    indices = pareto_indices(spec, results)
    reference = reference_point(spec, results)
    if not indices or reference is None:
        return 0.0
    points = _maximization_matrix(spec, [results[i] for i in indices])
    return hypervolume_of(points, reference)


def hypervolume_of(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (maximization) through BoTorch's box decomposition."""
    import torch
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    above = points[np.all(points > reference, axis=1)]
    if len(above) == 0:
        return 0.0
    if points.shape[1] == 1:  # one objective: the best value's distance past the threshold (BoTorch needs two)
        return float(above[:, 0].max() - reference[0])
    partitioning = DominatedPartitioning(
        ref_point=torch.as_tensor(reference, dtype=torch.double),
        Y=torch.as_tensor(above, dtype=torch.double),
    )
    return float(partitioning.compute_hypervolume().item())
