"""spec.budget.convergence: the measure (hypervolume or best-value gain over a window) and the loop's stop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nas_operator.core.convergence import check_convergence, first_decision
from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint
from nas_operator.resource.spec import Convergence, NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment

from .conftest import toy_doc
from .fakes import FakeBackend, Script
from .test_loop import Harness


def spec_with(objectives: int = 2, **convergence: Any) -> NASExperimentSpec:
    document = toy_doc(maxTrials=200, parallelism=1)
    if objectives == 1:
        document["spec"]["objectives"] = [{"metric": "f1", "goal": "minimize", "threshold": 1.1}]
    if convergence:
        document["spec"]["budget"]["convergence"] = convergence
    return load_experiment(document).spec


def state_of(spec: NASExperimentSpec, results: list[dict[str, float]], finished: list[int] | None = None) -> LoopState:
    """Succeeded trials with these metrics; `finished` gives their finishing times (default: in index order)."""
    state = LoopState("toy", spec_fingerprint(spec))
    for i, metrics in enumerate(results):
        state.trials[i] = TrialRecord(
            index=i,
            name=f"toy-t{i}",
            parameters={"x": 0.0, "y": 0.0},
            generator="Fake",
            status="succeeded",
            finished_at=float(finished[i] if finished else i),
            metrics=metrics,
        )
    return state


def test_no_decision_before_the_window_after_the_initial_trials() -> None:
    spec = spec_with(window=5, minImprovement=0.5)
    assert first_decision(spec, spec.budget.convergence) == 5 + 1  # type: ignore[arg-type]
    rule = Convergence(window=5, min_improvement=0.5, min_trials=12)
    assert first_decision(spec, rule) == 12
    flat = [{"f1": 0.5, "f2": 0.5}] * 11
    check = check_convergence(spec, state_of(spec, flat), rule)
    assert not check.converged and check.improvement is None and "11 of 12" in check.message
    check = check_convergence(spec, state_of(spec, [*flat, {"f1": 0.5, "f2": 0.5}]), rule)
    assert check.converged and check.improvement == 0.0


def test_hypervolume_gain_over_the_window_decides_for_several_objectives() -> None:
    rule = Convergence(window=2, min_improvement=0.10)
    spec = spec_with()
    # reference (1.1, 1.1): a point (a, b) alone dominates (1.1 - a) * (1.1 - b)
    base = [{"f1": 0.6, "f2": 0.6}, {"f1": 0.9, "f2": 0.9}]  # hypervolume 0.25
    grew = check_convergence(spec, state_of(spec, [*base, {"f1": 0.5, "f2": 0.6}, {"f1": 1.0, "f2": 1.0}]), rule)
    assert grew.improvement == pytest.approx(0.05 / 0.25) and not grew.converged  # 0.30 vs 0.25: +20%
    small = check_convergence(spec, state_of(spec, [*base, {"f1": 0.58, "f2": 0.6}, {"f1": 1.0, "f2": 1.0}]), rule)
    assert small.improvement == pytest.approx(0.01 / 0.25) and small.converged  # +4% < 10%
    assert "grew 4.00% over the last 2 succeeded trials" in small.message
    assert "minImprovement is 10.00%" in small.message


def test_without_thresholds_a_dominated_trial_that_widens_the_reference_is_no_progress() -> None:
    document = toy_doc(maxTrials=200, parallelism=1)
    for objective in document["spec"]["objectives"]:
        del objective["threshold"]
    spec = load_experiment(document).spec
    rule = Convergence(window=1, min_improvement=0.10)
    results = [{"f1": 0.2, "f2": 0.8}, {"f1": 0.8, "f2": 0.2}, {"f1": 0.9, "f2": 0.9}]  # the last: dominated, worst
    check = check_convergence(spec, state_of(spec, results), rule)
    assert check.improvement == 0.0 and check.converged


def test_no_hypervolume_at_the_start_of_the_window_is_not_convergence() -> None:
    rule = Convergence(window=2, min_improvement=0.10)
    spec = spec_with()
    outside = [{"f1": 2.0, "f2": 2.0}] * 4  # nothing inside the thresholds yet
    check = check_convergence(spec, state_of(spec, outside), rule)
    assert not check.converged and check.improvement is None


def test_trials_count_in_the_order_they_finished() -> None:
    rule = Convergence(window=1, min_improvement=0.10)
    spec = spec_with()
    results = [{"f1": 0.6, "f2": 0.6}, {"f1": 0.1, "f2": 0.1}, {"f1": 0.9, "f2": 0.9}]
    # trial 1 (the big gain) finished last: the window holds it
    assert not check_convergence(spec, state_of(spec, results, finished=[0, 10, 5]), rule).converged
    # trial 2 (no gain) finished last: converged, whatever the indices say
    assert check_convergence(spec, state_of(spec, results, finished=[0, 5, 10]), rule).converged


def test_one_objective_measures_the_best_value_against_the_spread_of_values() -> None:
    rule = Convergence(window=2, min_improvement=0.10)
    spec = spec_with(objectives=1)
    values = [0.9, 0.5, 0.7, 0.3]  # minimised
    results = [{"f1": v, "f2": 0.0} for v in values]
    check = check_convergence(spec, state_of(spec, [*results, {"f1": 0.49, "f2": 0.0}, {"f1": 0.8, "f2": 0.0}]), rule)
    # best before the window 0.3, after it still 0.3: no gain
    assert check.converged and check.improvement == 0.0
    better = check_convergence(spec, state_of(spec, [*results, {"f1": 0.2, "f2": 0.0}, {"f1": 0.8, "f2": 0.0}]), rule)
    q3, q1 = np.percentile([0.9, 0.5, 0.7, 0.3, 0.2, 0.8], [75, 25])  # the spread of every feasible value
    spread = q3 - q1
    assert better.improvement == pytest.approx(0.1 / spread) and not better.converged
    assert "the best f1 moved -0.1" in better.message


def test_infeasible_trials_never_count_as_the_best() -> None:
    rule = Convergence(window=1, min_improvement=0.10)
    spec = spec_with(objectives=1)  # threshold 1.1 on f1, minimised
    results = [{"f1": 0.9, "f2": 0.0}, {"f1": 0.5, "f2": 0.0}, {"f1": 5.0, "f2": 0.0}]
    check = check_convergence(spec, state_of(spec, results), rule)
    assert check.converged  # the last trial missed the threshold: it cannot have improved the best


def test_the_loop_stops_with_converged_lets_running_trials_finish_and_says_why() -> None:
    spec = load_experiment(
        {**toy_doc(maxTrials=50, parallelism=2)}
        | {
            "spec": {
                **toy_doc()["spec"],
                "budget": {
                    "maxTrials": 50,
                    "parallelism": 2,
                    "convergence": {"window": 4, "minImprovement": 0.01},
                },
            }
        }
    ).spec
    # every trial measures the same point: the hypervolume never grows after the first
    h = Harness(spec, FakeBackend(lambda name: Script(polls=2 if name.endswith(("1", "3", "5", "7", "9")) else 3)))
    h.run()
    assert (h.state.phase, h.state.reason) == ("Succeeded", "Converged")
    assert "hypervolume grew 0.00% over the last 4 succeeded trials" in h.state.message
    assert h.state.count("stopped") == 0  # the trial running at the decision finished, it was not killed
    assert 5 <= h.state.count("succeeded") < 50
    assert any(e.reason == "Converged" for e in h.events)
    # a wider window asked later reopens the experiment
    h.loop.update_spec(
        load_experiment(
            toy_doc()
            | {
                "spec": {
                    **toy_doc()["spec"],
                    "budget": {"maxTrials": 50, "parallelism": 2, "convergence": {"window": 40}},
                }
            }
        ).spec
    )
    assert not h.loop.finished


def test_the_spec_refuses_a_negative_bar_and_an_empty_window() -> None:
    from nas_operator.resource.spec_checks import SpecError

    for bad in ({"window": 0}, {"minImprovement": -0.1}):
        with pytest.raises(SpecError) as refused:
            spec_with(**bad)
        assert "spec.budget.convergence" in str(refused.value)
