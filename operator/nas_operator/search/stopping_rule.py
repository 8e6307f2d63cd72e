"""The early-stopping rule: may a running trial be stopped, given its partial curves and the finished trials?

Multi-objective on purpose. A single-metric rule (Ax's percentile strategy on the first objective, Katib's median
rule, Optuna's pruners) stops every trial whose accuracy trails, which is exactly the small, fast model that makes the
cheap end of a Pareto front. Here every objective is judged at once, and a trial is stopped only when even its *best
plausible* final point is useless:

- the best plausible final value of a metric is its value now plus the largest improvement any finished reference
  trial made after the same progression (never less than no improvement); a metric logged once at the start (the
  parameter count) has no later improvement in any reference, so it counts at its full, final value; a metric the
  trial has not logged yet is unknown, and an unknown metric is taken as arbitrarily good;
- the trial is stopped when that optimistic point misses an objective threshold or an outcome constraint, or is
  weakly dominated by a feasible trial already measured. A point weakly dominated by one measured point adds no
  hypervolume to the measured front, whatever the reference point, and the measured front only grows.

So the rule is sound as far as the references are representative: it can be wrong for a trial that would improve
after progression p by more than every finished trial did (a slow starter, a longer schedule than any reference, a
noisy `last` value). docs/early-stopping.md measures and discusses this. Pure numpy, no Ax, no I/O: core/progress.py
turns TensorBoard curves into the `TrialCurves` judged here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from nas_operator.resource.spec import EarlyStopping, NASExperimentSpec
from nas_operator.resource.spec_checks import metric_directions, parse_outcome_constraint
from nas_operator.search.pareto import feasible

MAX_CURVE_POINTS = 128
"""Points kept per metric of a trial's curve: what a gain needs is the running value at each progression, and an
evenly thinned curve of that many points bounds a finished trial's memory however long it logged (about 2 KiB per
metric in two float arrays: 10,000 reference trials with 3 metrics stay near 60 MB). Thinning keeps the last point;
a lookup between kept points takes the earlier one, which for an improving curve makes a reference's later gain
larger, never smaller: the projection only gets more optimistic."""


RELATIVE_EPSILON = 1e-9
"""Below this change before p (relative to the value), a reference's change after p has no ratio to scale by."""


@dataclass(frozen=True)
class MetricCurve:
    """One metric of one trial: its value, as the metric's reduction sees it so far, at increasing progressions.

    `values[k]` is the reduced value (last, max or min) over every point up to `progressions[k]`, so looking it up at
    any progression gives what the trial would have reported had it stopped there.
    """

    progressions: np.ndarray
    values: np.ndarray

    @classmethod
    def from_points(cls, points: Sequence[tuple[float, float]], reduce: str) -> MetricCurve:
        """From (progression, value) points in the order they were logged; NaN values are skipped by max and min."""
        ordered = sorted(enumerate(points), key=lambda item: (item[1][0], item[0]))
        progressions: list[float] = []
        values: list[float] = []
        running = math.nan
        for _, (progression, value) in ordered:
            if reduce == "max":
                running = value if math.isnan(running) else (running if math.isnan(value) else max(running, value))
            elif reduce == "min":
                running = value if math.isnan(running) else (running if math.isnan(value) else min(running, value))
            else:
                running = value
            if progressions and progressions[-1] == progression:
                values[-1] = running
            else:
                progressions.append(float(progression))
                values.append(running)
        if len(progressions) > MAX_CURVE_POINTS:  # even thinning, always keeping the last point
            stride = math.ceil(len(progressions) / MAX_CURVE_POINTS)
            keep = sorted({*range(0, len(progressions), stride), len(progressions) - 1})
            progressions = [progressions[k] for k in keep]
            values = [values[k] for k in keep]
        return cls(np.asarray(progressions, dtype=float), np.asarray(values, dtype=float))

    def at(self, progression: float) -> float | None:
        """The value at the last logged progression not after `progression`; None before the first point."""
        k = int(np.searchsorted(self.progressions, progression, side="right"))
        return float(self.values[k - 1]) if k else None

    @property
    def final(self) -> float | None:
        return float(self.values[-1]) if len(self.values) else None


@dataclass(frozen=True)
class TrialCurves:
    """What is known of one trial's training: how far it got and each metric's curve."""

    progression: float
    metrics: Mapping[str, MetricCurve] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    """A trial that finished its training: its curves, and the final metrics the loop recorded."""

    index: int
    curves: TrialCurves
    final: Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    """The rule's answer for one trial at one progression.

    `observed` holds each metric known so far as measured at this progression. `projected` is what the model is told
    about a stopped trial: each known metric's *estimated* final value, its value now moved by the median change of
    the references (where the decision used the most favourable change). The decision needs a bound, so that it is
    safe; the model needs an estimate: told the bound, it believes the region better than it is and proposes it
    again (measured, docs/early-stopping.md), told the value now, it believes it worse than it is. The estimate lies
    between the two, so a stopped trial's estimate is still dominated or outside the bound it missed. `judged` is
    False when no decision could be made yet (and `reason` says why).
    """

    stop: bool
    judged: bool
    progression: float
    reason: str
    projected: dict[str, float] = field(default_factory=dict)
    observed: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Range:
    """The plausible final values of one metric: its value now moved by the smallest and largest later change."""

    now: float
    low: float
    high: float
    references: int
    estimate: float

    def best(self, larger_is_better: bool) -> float:
        return self.high if larger_is_better else self.low


def judge(
    spec: NASExperimentSpec,
    rule: EarlyStopping,
    trial: TrialCurves,
    references: Sequence[Reference],
    measured: Mapping[int, Mapping[str, float]],
) -> Verdict:
    """Whether `trial` should be stopped now. `measured` holds the final metrics of succeeded trials (by index)."""
    p = trial.progression
    if p < rule.min_progression:
        return Verdict(False, False, p, f"progression {p:g} is below minProgression {rule.min_progression:g}")
    reached = [r for r in references if r.curves.progression >= p]
    if len(reached) < rule.min_reference_trials:
        return Verdict(
            False,
            False,
            p,
            f"{len(reached)} finished trial(s) reached progression {p:g}; minReferenceTrials is "
            f"{rule.min_reference_trials}",
        )
    directions = metric_directions(spec)
    ranges = {metric: _plausible_range(metric, trial, reached, p, rule.projection) for metric in directions}
    estimates = {metric: span.estimate for metric, span in ranges.items() if span is not None}
    observed = {metric: span.now for metric, span in ranges.items() if span is not None}
    where = f"at {_progression_name(rule)} {p:g}"
    missed = _missed_bound(spec, ranges)
    if missed:
        return Verdict(True, True, p, f"{where}, {missed}", estimates, observed)
    dominating = _dominating_trial(spec, ranges, measured)
    if dominating is not None:
        index, metrics = dominating
        shown = ", ".join(_shown(o.metric, ranges[o.metric], o.minimize) for o in spec.objectives)
        theirs = ", ".join(f"{o.metric}={metrics[o.metric]:.4g}" for o in spec.objectives)
        return Verdict(
            True,
            True,
            p,
            f"{where}, even its best projection ({shown}; from {len(reached)} finished trials) is dominated by "
            f"trial {index} ({theirs}): it cannot " + ("beat it" if len(spec.objectives) == 1 else "add hypervolume"),
            estimates,
            observed,
        )
    goal = "become the best trial" if len(spec.objectives) == 1 else "reach the front"
    return Verdict(False, True, p, f"{where}, it may still {goal}", estimates, observed)


def _progression_name(rule: EarlyStopping) -> str:
    return rule.progression


def _plausible_range(
    metric: str, trial: TrialCurves, references: Sequence[Reference], p: float, projection: str = "gain"
) -> _Range | None:
    """None when the trial has not logged the metric yet (then it may end anywhere).

    gain: the trial's value now plus each reference's change after p. relative: the trial's own change so far
    (from its first logged value) scaled by each reference's change after p per unit of change before it, so a
    trial that has moved little is projected to move little; a reference that had not moved by p and moved after
    (a plateau that ended) adds its whole change, as with gain; a metric no reference changed keeps its value.
    """
    curve = trial.metrics.get(metric)
    now = curve.at(p) if curve is not None else None
    if curve is None or now is None or not math.isfinite(now):
        return None
    first = float(curve.values[0])
    changes = [0.0]
    for reference in references:
        theirs = reference.curves.metrics.get(metric)
        then = theirs.at(p) if theirs is not None else None
        final = reference.final.get(metric)
        if theirs is None or then is None or final is None or not (math.isfinite(then) and math.isfinite(final)):
            continue
        if projection == "gain":
            changes.append(final - then)
            continue
        before = then - float(theirs.values[0])
        if final == then:
            changes.append(0.0)
        elif abs(before) > RELATIVE_EPSILON * max(1.0, abs(then)) and math.isfinite(first):
            changes.append((now - first) * (final - then) / before)
        else:  # flat until p, then it moved: a plateau can end, so its whole change counts as a gain
            changes.append(final - then)
    typical = statistics.median(changes[1:]) if len(changes) > 1 else 0.0
    return _Range(now, now + min(changes), now + max(changes), len(changes) - 1, now + typical)


def _missed_bound(spec: NASExperimentSpec, ranges: Mapping[str, _Range | None]) -> str:
    """The first threshold or constraint even the favourable end of a range misses, as a sentence; "" if none."""
    for objective in spec.objectives:
        span = ranges.get(objective.metric)
        if objective.threshold is None or span is None:
            continue
        best = span.best(not objective.minimize)
        if (objective.minimize and best > objective.threshold) or (
            not objective.minimize and best < objective.threshold
        ):
            word = "at least" if objective.minimize else "at most"
            return (
                f"{objective.metric} can reach {word} {best:.4g} (now {span.now:.4g}, changes after this point in "
                f"{span.references} finished trials) and misses its threshold {objective.threshold:g}"
            )
    for text in spec.outcome_constraints:
        constraint = parse_outcome_constraint(text)
        span = ranges.get(constraint.metric)
        if span is None:
            continue
        if (constraint.op == "<=" and span.low > constraint.bound) or (
            constraint.op == ">=" and span.high < constraint.bound
        ):
            best = span.low if constraint.op == "<=" else span.high
            return (
                f"{constraint.metric} can reach {best:.4g} at best (now {span.now:.4g}) and breaks the outcome "
                f"constraint {constraint.metric} {constraint.op} {constraint.bound:g}"
            )
    return ""


def _dominating_trial(
    spec: NASExperimentSpec,
    ranges: Mapping[str, _Range | None],
    measured: Mapping[int, Mapping[str, float]],
) -> tuple[int, Mapping[str, float]] | None:
    """A feasible measured trial at least as good as the optimistic point in every objective, if any."""
    optimistic = []
    for objective in spec.objectives:
        span = ranges.get(objective.metric)
        if span is None:
            return None  # an objective not known yet may end anywhere: nothing can dominate it
        optimistic.append(-span.best(False) if objective.minimize else span.best(True))
    for index in sorted(measured):
        metrics = measured[index]
        if not feasible(spec, metrics):
            continue
        theirs = [-metrics[o.metric] if o.minimize else metrics[o.metric] for o in spec.objectives]
        if all(t >= o for t, o in zip(theirs, optimistic, strict=True)):
            return index, metrics
    return None


def _shown(metric: str, span: _Range | None, minimize: bool) -> str:
    if span is None:
        return f"{metric} unknown"
    best = span.best(not minimize)
    if span.low == span.high:
        return f"{metric}={best:.4g}"
    return f"{metric} {'≥' if minimize else '≤'} {best:.4g}"
