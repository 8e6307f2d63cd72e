"""Whether a search has stopped improving (spec.budget.convergence).

The two-stage NAS guide in shared/reference tells users to watch the search curve and stop once it
flattens, since the number of trials a search needs is unknown in advance. This is that watch, done
by the loop: measured on succeeded trials in the order they finished, over a window of the last
`window` of them.

- Several objectives: the hypervolume's gain over the window as a fraction of the hypervolume at
  its start. No decision while that is 0 (nothing inside the thresholds yet: the search has not
  started to improve, it has not converged).
- One objective: the best feasible value's gain over the window as a fraction of the interquartile
  range of the feasible values seen so far, so that the bar does not depend on the metric's units
  or on how close its best is to 0.

Both are the measures of Ax's ImprovementGlobalStoppingStrategy (docs/workflow.md compares them);
the difference is that the trials are counted in the order they finished, which is the order their
results reached the model, and that a decision never kills a running trial: the loop launches
nothing new and lets those finish, and their results may show the search was not done after all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.resource.spec import Convergence, NASExperimentSpec
from nas_operator.search.pareto import feasible, hypervolume_of, pareto_indices, reference_point


@dataclass(frozen=True)
class ConvergenceCheck:
    """The measure at the last succeeded trial; `improvement` is None while no decision can be made."""

    converged: bool
    succeeded: int
    improvement: float | None
    message: str


def succeeded_in_order(state: LoopState) -> list[TrialRecord]:
    """Succeeded trials in the order their results came in (index breaks ties: a restore keeps the order)."""
    done = state.by_status("succeeded")
    return sorted(done, key=lambda t: (t.finished_at if t.finished_at is not None else float("inf"), t.index))


def first_decision(spec: NASExperimentSpec, rule: Convergence) -> int:
    """Succeeded trials before any decision: minTrials, else the window after the initial trials."""
    floor = rule.window + 1  # a window needs a trial before it
    if rule.min_trials is not None:
        return max(rule.min_trials, floor)
    return max((spec.algorithm.initial_trials or 0) + rule.window, floor)


def check_convergence(spec: NASExperimentSpec, state: LoopState, rule: Convergence) -> ConvergenceCheck:
    trials = succeeded_in_order(state)
    needed = first_decision(spec, rule)
    if len(trials) < needed:
        return ConvergenceCheck(False, len(trials), None, f"{len(trials)} of {needed} succeeded trials before deciding")
    if len(spec.objectives) == 1:
        return _best_value_check(spec, rule, trials)
    before = {t.index: t.metrics for t in trials[: -rule.window]}
    return _hypervolume_check(spec, rule, before, {t.index: t.metrics for t in trials})


def _hypervolume_check(
    spec: NASExperimentSpec,
    rule: Convergence,
    before: dict[int, dict[str, float]],
    now: dict[int, dict[str, float]],
) -> ConvergenceCheck:
    # One reference point for both ends of the window: the final one (thresholds; without them, the worst feasible
    # value seen so far), else a dominated trial that widens the reference would pass for progress.
    reference = reference_point(spec, now)
    start, end = _hypervolume_at(spec, before, reference), _hypervolume_at(spec, now, reference)
    if start <= 0.0:
        return ConvergenceCheck(False, len(now), None, "no hypervolume yet at the start of the window")
    improvement = (end - start) / start
    message = (
        f"the hypervolume grew {improvement:.2%} over the last {rule.window} succeeded trials "
        f"({start:.6g} to {end:.6g}); spec.budget.convergence.minImprovement is {rule.min_improvement:.2%}"
    )
    return ConvergenceCheck(improvement < rule.min_improvement, len(now), improvement, message)


def _hypervolume_at(
    spec: NASExperimentSpec, results: dict[int, dict[str, float]], reference: np.ndarray | None
) -> float:
    indices = pareto_indices(spec, results)
    if not indices or reference is None:
        return 0.0
    signs = np.array([-1.0 if o.minimize else 1.0 for o in spec.objectives])
    points = np.array([[results[i][o.metric] for o in spec.objectives] for i in indices], dtype=float) * signs
    return hypervolume_of(points, reference)


def _best_value_check(spec: NASExperimentSpec, rule: Convergence, trials: list[TrialRecord]) -> ConvergenceCheck:
    objective = spec.objectives[0]
    sign = -1.0 if objective.minimize else 1.0
    values = [sign * t.metrics[objective.metric] if feasible(spec, t.metrics) else -np.inf for t in trials]
    running = np.maximum.accumulate(np.array(values, dtype=float))
    seen = np.array([v for v in values if np.isfinite(v)], dtype=float)
    start, end = running[-rule.window - 1], running[-1]
    if len(seen) < 2 or not np.isfinite(start):
        return ConvergenceCheck(False, len(trials), None, "too few feasible trials before the window")
    q1, q3 = np.percentile(seen, [25, 75])
    spread = float(q3 - q1)
    gain = float(end - start)
    improvement = gain / spread if spread > 0 else (0.0 if gain == 0 else float("inf"))
    message = (
        f"the best {objective.metric} moved {sign * gain:+.6g} over the last {rule.window} succeeded trials "
        f"({sign * start:.6g} to {sign * end:.6g}), {improvement:.2%} of the interquartile range of the values seen "
        f"({spread:.6g}); spec.budget.convergence.minImprovement is {rule.min_improvement:.2%}"
    )
    return ConvergenceCheck(improvement < rule.min_improvement, len(trials), improvement, message)
