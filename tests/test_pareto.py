"""Observed Pareto front and hypervolume."""

from __future__ import annotations

import numpy as np
import pytest

from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.pareto import feasible, hypervolume, hypervolume_of, non_dominated, pareto_indices

from .conftest import toy_doc


def _spec(outcome_constraints: list[str] | None = None):  # type: ignore[no-untyped-def]
    doc = toy_doc()
    doc["spec"]["objectives"] = [
        {"metric": "acc", "goal": "maximize", "threshold": 0.5},
        {"metric": "size", "goal": "minimize", "threshold": 100.0},
    ]
    if outcome_constraints:
        doc["spec"]["metrics"]["definitions"] = [{"name": "lat"}]
        doc["spec"]["outcomeConstraints"] = outcome_constraints
    return load_experiment(doc).spec


def test_non_dominated_keeps_ties_and_drops_dominated() -> None:
    points = np.array([[1.0, 1.0], [2.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.0, 2.0]])
    assert non_dominated(points).tolist() == [True, True, False, True, True]


def test_front_respects_thresholds_and_constraints() -> None:
    spec = _spec(["lat <= 5"])
    results = {
        0: {"acc": 0.9, "size": 80.0, "lat": 1.0},
        1: {"acc": 0.8, "size": 20.0, "lat": 1.0},
        2: {"acc": 0.95, "size": 10.0, "lat": 9.0},  # best on both, but breaks the latency constraint
        3: {"acc": 0.4, "size": 1.0, "lat": 1.0},  # below the accuracy threshold
        4: {"acc": 0.7, "size": 50.0, "lat": 1.0},  # dominated by 1
    }
    assert pareto_indices(spec, results) == [0, 1]
    assert not feasible(spec, results[2]) and not feasible(spec, results[3])


def test_hypervolume_is_the_union_of_dominated_boxes() -> None:
    spec = _spec()
    results = {0: {"acc": 0.9, "size": 80.0}, 1: {"acc": 0.8, "size": 20.0}}
    # maximization space: (0.9, -80), (0.8, -20), reference (0.5, -100)
    expected = 0.4 * 20 + 0.3 * 60
    assert hypervolume(spec, results) == pytest.approx(expected)
    assert hypervolume(spec, {}) == 0.0


def test_hypervolume_of_three_objectives() -> None:
    points = np.array([[1.0, 1.0, 1.0]])
    assert hypervolume_of(points, np.zeros(3)) == pytest.approx(1.0)
    points = np.array([[1.0, 1.0, 1.0], [2.0, 0.5, 0.5]])
    assert hypervolume_of(points, np.zeros(3)) == pytest.approx(1.0 + 1.0 * 0.5 * 0.5)
