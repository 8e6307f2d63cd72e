"""Warm start (spec.warmStart): earlier experiments' finished trials, checked against this experiment's space.

A NASExperiment's search space is immutable, so widening a space, adding a parameter's choice or
changing a threshold means a new experiment; warm start is how it keeps what the earlier ones
measured. The chosen trials are copied into this experiment's state once, when it starts, and
given to the model before its first candidate (and again on every restore, from the copy), so a
source deleted or changed later changes nothing here. They are the model's observations, not this
experiment's trials: they take no part in its budget, front, counts or convergence.

A source trial is used only when it means the same thing here:
- it succeeded (failed, stopped or early-stopped trials carry no full result);
- it measured every metric this experiment models (objectives and constrained metrics), finite;
- it has every tunable parameter of this space, of the right kind (an int for an int range, a
  number for a float range, one of the values for a choice) and inside this space: a value outside
  the new bounds or choices is not moved to the nearest one, since its result belongs to the point
  where it was measured; that trial is skipped;
- a parameter fixed here, if the source had it, had this value; it meets the parameter constraints.
Parameters only the source had are ignored: its trials then count as measured at whatever value
they had, which the model sees as noise. Every skipped trial is counted under its reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nas_operator.core.state import LoopState
from nas_operator.resource.spec import NASExperimentSpec, Parameter
from nas_operator.resource.spec_checks import metric_directions, parse_parameter_constraint

# At most this many prior trials are kept (the first ones, sources in the order named); a state must fit its store.
MAX_PRIOR_TRIALS = 2000


@dataclass(frozen=True)
class PriorTrial:
    """One earlier trial as the model gets it: where it came from, its point and its result."""

    source: str
    trial: str
    parameters: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class PriorSelection:
    trials: list[PriorTrial] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        sources = sorted({t.source for t in self.trials})
        text = f"{len(self.trials)} trial(s) of {', '.join(sources) or 'no source'} given to the model"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return text


def select_prior_trials(spec: NASExperimentSpec, sources: Iterable[tuple[str, LoopState]]) -> PriorSelection:
    selection = PriorSelection()
    metrics = sorted(metric_directions(spec))
    constraints = [parse_parameter_constraint(text) for text in spec.parameter_constraints]
    seen: set[str] = set()
    for source, state in sources:
        if source in seen:  # named twice (in the spec and on the command line): its trials count once
            continue
        seen.add(source)
        for trial in state.by_status("succeeded"):
            try:
                why = _unusable(spec, trial.parameters, trial.metrics, metrics, constraints)
            except (OverflowError, TypeError, ValueError):  # a hand-edited state: an unusable value, not a crash
                why = "with a value that is not a number it should be"
            if why:
                selection.skipped[why] += 1
                continue
            parameters = {p.name: _typed(p, trial.parameters[p.name]) for p in spec.parameters if p.type != "fixed"}
            parameters.update({p.name: p.value for p in spec.parameters if p.type == "fixed"})
            values = {name: float(trial.metrics[name]) for name in metrics}
            selection.trials.append(PriorTrial(source, trial.name, parameters, values))
    if len(selection.trials) > MAX_PRIOR_TRIALS:
        selection.skipped[f"beyond the first {MAX_PRIOR_TRIALS}"] += len(selection.trials) - MAX_PRIOR_TRIALS
        selection.trials = selection.trials[:MAX_PRIOR_TRIALS]
    return selection


def _unusable(
    spec: NASExperimentSpec,
    parameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    needed: list[str],
    constraints: list[Any],
) -> str:
    """Why this trial cannot be given to this experiment's model ("" when it can)."""
    for name in needed:
        value = metrics.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return f"without a finite {name}"
    for p in spec.parameters:
        value = parameters.get(p.name)
        if p.type == "fixed":
            if p.name in parameters and (value != p.value or isinstance(value, bool) != isinstance(p.value, bool)):
                return f"with {p.name} other than its fixed value here"
            continue
        if p.name not in parameters:
            return f"without parameter {p.name}"
        if not _inside(p, value):
            return f"with {p.name} outside this space"
    point = {p.name: _typed(p, parameters[p.name]) for p in spec.parameters if p.type == "range"}
    for constraint in constraints:
        if all(name in point for name in constraint.coefficients):
            total = sum(c * float(point[name]) for name, c in constraint.coefficients.items())
            if total > constraint.bound + 1e-9:
                return "outside the parameter constraints"
    return ""


def _inside(p: Parameter, value: Any) -> bool:
    if p.type == "choice":
        assert p.values is not None
        return any(type(v) is type(value) and v == value for v in p.values) or (
            _number(value) and any(_number(v) and float(v) == float(value) for v in p.values)
        )
    if not _number(value):
        return False
    assert p.lower is not None and p.upper is not None
    if p.is_int and float(value) != math.floor(float(value)):
        return False
    return float(p.lower) <= float(value) <= float(p.upper)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def _typed(p: Parameter, value: Any) -> Any:
    """The value as this space holds it (an int range's 64.0 is 64; a numeric choice is the choice itself)."""
    if p.type == "choice":
        assert p.values is not None
        return next((v for v in p.values if v == value and isinstance(v, bool) == isinstance(value, bool)), value)
    return int(value) if p.is_int else float(value)
