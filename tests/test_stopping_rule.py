"""The multi-objective early-stopping rule on constructed learning curves."""

from __future__ import annotations

import math

import pytest

from nas_operator.resource.spec import EarlyStopping
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.stopping_rule import MAX_CURVE_POINTS, MetricCurve, Reference, TrialCurves, judge

from .conftest import toy_doc

RULE = EarlyStopping(progression="epoch", min_progression=2, min_reference_trials=3)


def _spec(threshold: float | None = None, constraints: list[str] | None = None):  # type: ignore[no-untyped-def]
    doc = toy_doc()
    doc["spec"]["objectives"] = [
        {"metric": "acc", "goal": "maximize", **({"threshold": threshold} if threshold is not None else {})},
        {"metric": "params", "goal": "minimize"},
    ]
    doc["spec"]["metrics"]["definitions"] = [{"name": "acc", "reduce": "max"}, {"name": "params"}]
    if constraints:
        doc["spec"]["metrics"]["definitions"].append({"name": "lat"})
        doc["spec"]["outcomeConstraints"] = constraints
    return load_experiment(doc).spec


def _curves(acc: list[float], params: float | None, lat: list[float] | None = None) -> TrialCurves:
    """acc logged at epochs 0..n-1; params logged once at epoch 0 (a static metric)."""
    metrics = {"acc": MetricCurve.from_points([(float(e), a) for e, a in enumerate(acc)], "max")}
    if params is not None:
        metrics["params"] = MetricCurve.from_points([(0.0, params)], "last")
    if lat is not None:
        metrics["lat"] = MetricCurve.from_points([(float(e), v) for e, v in enumerate(lat)], "last")
    return TrialCurves(float(len(acc) - 1), metrics)


def _reference(index: int, acc: list[float], params: float) -> Reference:
    return Reference(index, _curves(acc, params), {"acc": max(acc), "params": params})


# Three finished trials over 10 epochs: after epoch 3 the largest later gain in accuracy is 0.10 (trial 1).
REFERENCES = [
    _reference(0, [0.50, 0.70, 0.80, 0.85, 0.88, 0.90, 0.91, 0.92, 0.92, 0.93], 5000.0),  # gains 0.08 after 3
    _reference(1, [0.30, 0.50, 0.60, 0.70, 0.74, 0.77, 0.78, 0.79, 0.80, 0.80], 500.0),  # gains 0.10 after 3
    _reference(2, [0.60, 0.75, 0.84, 0.90, 0.92, 0.94, 0.95, 0.95, 0.96, 0.96], 2000.0),  # gains 0.06 after 3
]
MEASURED = {r.index: dict(r.final) for r in REFERENCES}


def test_a_large_model_that_cannot_catch_up_is_stopped_and_the_reason_names_the_evidence() -> None:
    # 8000 parameters and 0.70 at epoch 3: at best 0.80, while trial 2 has 0.96 with 2000 parameters
    verdict = judge(_spec(), RULE, _curves([0.40, 0.55, 0.65, 0.70], 8000.0), REFERENCES, MEASURED)
    assert verdict.judged and verdict.stop
    assert verdict.progression == 3
    assert "dominated by trial" in verdict.reason and "epoch 3" in verdict.reason
    # judged on the bound (0.70 + the largest change, 0.10), told the estimate (0.70 + the median change, 0.08)
    assert verdict.reason.startswith("at epoch 3, even its best projection (acc ≤ 0.8, params=8000")
    assert math.isclose(verdict.projected["acc"], 0.78)
    assert verdict.projected["params"] == 8000.0
    assert verdict.observed == {"acc": 0.70, "params": 8000.0}


def test_a_small_model_with_low_accuracy_is_kept_because_it_may_extend_the_front() -> None:
    # same accuracy curve, but 100 parameters: fewer than any measured trial, so nothing dominates it
    verdict = judge(_spec(), RULE, _curves([0.40, 0.55, 0.65, 0.70], 100.0), REFERENCES, MEASURED)
    assert verdict.judged and not verdict.stop
    assert "may still reach the front" in verdict.reason


def test_the_largest_later_gain_protects_a_trial_behind_but_within_reach() -> None:
    # 0.87 at epoch 3 with 2500 parameters: trial 0 (0.93, 5000) does not dominate (more params); trial 2 (0.96,
    # 2000) does only if 0.87 + 0.10 <= 0.96 -- it is 0.97, so the trial may still beat it: kept
    verdict = judge(_spec(), RULE, _curves([0.50, 0.70, 0.80, 0.87], 2500.0), REFERENCES, MEASURED)
    assert not verdict.stop
    assert "may still reach the front" in verdict.reason
    # at 0.85 the best projection is 0.95 <= 0.96: dominated by trial 2
    assert judge(_spec(), RULE, _curves([0.50, 0.70, 0.80, 0.85], 2500.0), REFERENCES, MEASURED).stop


def test_a_trial_that_cannot_reach_an_objective_threshold_is_stopped() -> None:
    spec = _spec(threshold=0.9)
    verdict = judge(spec, RULE, _curves([0.30, 0.50, 0.60, 0.70], 100.0), REFERENCES, MEASURED)
    assert verdict.stop
    assert "misses its threshold 0.9" in verdict.reason
    # within reach of the threshold (0.82 + 0.10 >= 0.9): kept, it is the smallest model
    assert not judge(spec, RULE, _curves([0.30, 0.50, 0.60, 0.82], 100.0), REFERENCES, MEASURED).stop


def test_an_outcome_constraint_broken_even_at_its_best_stops_the_trial() -> None:
    spec = _spec(constraints=["lat <= 5"])
    references = [
        Reference(
            r.index, _curves(r.curves.metrics["acc"].values, r.final["params"], [9.0] * 10), {**r.final, "lat": 9.0}
        )
        for r in REFERENCES
    ]
    trial = _curves([0.4, 0.5, 0.6, 0.7], 100.0, lat=[9.0, 8.0, 7.0, 7.0])
    verdict = judge(spec, RULE, trial, references, {})
    assert verdict.stop and "breaks the outcome constraint lat <= 5" in verdict.reason
    # the model hears each metric's estimate: the median change of the references after this point
    assert verdict.projected == pytest.approx({"lat": 7.0, "params": 100.0, "acc": 0.78})
    assert set(verdict.observed) == {"acc", "params", "lat"}
    within = _curves([0.4, 0.5, 0.6, 0.7], 100.0, lat=[9.0, 8.0, 7.0, 4.0])
    assert not judge(spec, RULE, within, references, {}).stop


def test_no_decision_before_the_minimum_progression_or_enough_references() -> None:
    hopeless = [0.10, 0.11, 0.12, 0.13]
    early = judge(_spec(), RULE, _curves(hopeless[:2], 9000.0), REFERENCES, MEASURED)
    assert not early.judged and not early.stop and "below minProgression" in early.reason
    few = judge(_spec(), RULE, _curves(hopeless, 9000.0), REFERENCES[:2], MEASURED)
    assert not few.judged and not few.stop and "minReferenceTrials is 3" in few.reason
    # references that stopped before this progression say nothing about what happens after it
    short = [_reference(9 + k, [0.5, 0.6, 0.7], 10.0) for k in range(3)]
    past = judge(_spec(), RULE, _curves(hopeless, 9000.0), short, MEASURED)
    assert not past.judged and "0 finished trial(s) reached progression 3" in past.reason
    assert judge(_spec(), RULE, _curves(hopeless, 9000.0), REFERENCES, MEASURED).stop


def test_an_objective_not_logged_yet_cannot_be_dominated() -> None:
    verdict = judge(_spec(), RULE, _curves([0.1, 0.1, 0.1, 0.1], None), REFERENCES, MEASURED)
    assert verdict.judged and not verdict.stop
    assert "params" not in verdict.projected


def test_only_feasible_measured_trials_dominate() -> None:
    spec = _spec(threshold=0.97)  # no measured trial reaches 0.97: none is feasible, none dominates
    verdict = judge(spec, RULE, _curves([0.80, 0.85, 0.90, 0.95], 9000.0), REFERENCES, MEASURED)
    assert not verdict.stop  # 0.95 + 0.10 may pass the threshold


def test_curve_values_follow_the_metric_reduction_and_stay_bounded() -> None:
    best = MetricCurve.from_points([(0, 0.5), (1, 0.9), (2, 0.6)], "max")
    assert best.at(0.5) == 0.5 and best.at(2) == 0.9 and best.at(-1) is None
    last = MetricCurve.from_points([(0, 0.5), (1, 0.9), (2, 0.6)], "last")
    assert last.at(2) == 0.6 and last.final == 0.6
    nan = MetricCurve.from_points([(0, math.nan), (1, 0.4)], "min")
    assert nan.at(1) == 0.4
    long = MetricCurve.from_points([(float(k), float(k)) for k in range(10_000)], "last")
    assert len(long.progressions) <= MAX_CURVE_POINTS + 1
    assert long.final == 9999.0 and long.progressions[-1] == 9999.0


def test_relative_projection_scales_the_trials_own_progress_and_respects_plateaus() -> None:
    spec = _spec(threshold=0.5)
    crawling = _curves([0.40, 0.41, 0.42, 0.43], 100.0)  # the smallest model, barely learning
    # gain: 0.43 + 0.10 (trial 1's change after epoch 3) reaches the threshold: kept
    assert not judge(spec, RULE, crawling, REFERENCES, MEASURED).stop
    # relative: it moved 0.03 so far; the most any reference moved after epoch 3 per unit moved before is trial 1's
    # 0.10 / 0.40: at most 0.43 + 0.0075, under the threshold
    relative = RULE.model_copy(update={"projection": "relative"})
    verdict = judge(spec, relative, crawling, REFERENCES, MEASURED)
    assert verdict.stop and "misses its threshold 0.5" in verdict.reason
    assert verdict.projected["acc"] == pytest.approx(0.43 + 0.03 * 0.08 / 0.35)  # the median reference's ratio
    # a reference that sat on a plateau until epoch 3 and then learned: its whole gain counts, the trial is kept
    plateau = _reference(7, [0.10, 0.10, 0.10, 0.10, 0.60, 0.80, 0.85, 0.86, 0.87, 0.87], 50_000.0)
    assert not judge(spec, relative, crawling, [*REFERENCES, plateau], MEASURED).stop
