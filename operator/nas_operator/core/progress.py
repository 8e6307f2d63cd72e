"""Partial learning curves of running trials, and the curves of finished ones, as the stopping rule reads them.

A running trial keeps one incremental `EventReader` (event_reader.py) for as long as it runs: each step reads only
what was appended since the last, a half-written last record waits for the next step, and every curve is bounded
(scalar_curve.py). A finished trial's curves are read once, when it is first needed as a reference, and kept as a
hundred-odd points per metric (stopping_rule.MAX_CURVE_POINTS).

Progression is either the TensorBoard step of each point, or a scalar tag the trial logs (Lightning's `epoch`): a
metric point then takes the progression logged at the latest step not after its own.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nas_operator.core.event_reader import DEFAULT_LIMITS, EventReader, ReadLimits
from nas_operator.core.metrics import metric_definitions
from nas_operator.core.scalar_curve import Curve
from nas_operator.resource.spec import EarlyStopping, MetricDefinition, NASExperimentSpec
from nas_operator.search.stopping_rule import MetricCurve, TrialCurves

log = logging.getLogger(__name__)

STEP = "step"
MAX_POD_DIRS = 256
"""Subdirectories looked at when choosing a Kubernetes trial's live pod directory (one per pod the Job started; the
Job's backoffLimit keeps that small, this bounds a listing the trial's volume could make long)."""


def curves_of(reader: EventReader, definitions: Iterable[MetricDefinition], rule: EarlyStopping) -> TrialCurves | None:
    """The reader's scalars as progression-indexed curves; None while no progression is known yet."""
    definitions = list(definitions)
    scalar_curves = {d.name: reader.curve(d.effective_tag) for d in definitions}
    if rule.progression == STEP:
        steps = [c.last.step for c in scalar_curves.values() if c is not None and c.last is not None]
        if not steps:
            return None
        metrics = {
            d.name: MetricCurve.from_points([(float(p.step), p.value) for p in curve.points()], d.reduce)
            for d in definitions
            if (curve := scalar_curves[d.name]) is not None
        }
        return TrialCurves(float(max(steps)), metrics)
    marks = reader.curve(rule.progression)
    if marks is None or marks.max_point is None:
        return None
    at_step = _ProgressionAtStep(marks)
    metrics = {
        d.name: MetricCurve.from_points([(at_step(p.step), p.value) for p in curve.points()], d.reduce)
        for d in definitions
        if (curve := scalar_curves[d.name]) is not None
    }
    return TrialCurves(float(marks.max_point.value), metrics)


class _ProgressionAtStep:
    """Step -> the progression value logged at the latest step not after it (the first one before any)."""

    def __init__(self, marks: Curve) -> None:
        points = [p for p in marks.points() if p.value == p.value]  # NaN progressions say nothing
        self.steps = [p.step for p in points]
        self.values = [p.value for p in points]

    def __call__(self, step: int) -> float:
        if not self.values:
            return 0.0
        k = bisect.bisect_right(self.steps, step)
        return float(self.values[k - 1] if k else self.values[0])


def wanted_tags(spec: NASExperimentSpec, rule: EarlyStopping) -> set[str]:
    tags = {d.effective_tag for d in metric_definitions(spec)}
    if rule.progression != STEP:
        tags.add(rule.progression)
    return tags


def read_curves(
    spec: NASExperimentSpec, rule: EarlyStopping, log_dir: Path, limits: ReadLimits = DEFAULT_LIMITS
) -> TrialCurves | None:
    """A finished trial's curves in one read (a reference for the rule); None if nothing usable is there."""
    reader = EventReader(log_dir, wanted_tags(spec, rule), limits)
    reader.update()
    return curves_of(reader, metric_definitions(spec), rule)


@dataclass
class _Watch:
    log_dir: Path
    reader: EventReader


class RunningCurves:
    """One incremental reader per running trial; readers of trials no longer running are dropped by `keep_only`."""

    def __init__(self, spec: NASExperimentSpec, rule: EarlyStopping, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.spec = spec
        self.rule = rule
        self.limits = limits
        self._watches: dict[str, _Watch] = {}

    def update(self, trial: str, log_dir: Path) -> TrialCurves | None:
        """Read what the trial appended since the last call (a new log dir, a retried pod say, starts afresh)."""
        watch = self._watches.get(trial)
        if watch is None or watch.log_dir != log_dir:
            watch = self._watches[trial] = _Watch(log_dir, EventReader(log_dir, wanted_tags(self.spec, self.rule)))
        report = watch.reader.update()
        for warning in report.warnings:
            log.debug("partial curves of %s: %s", trial, warning)
        return curves_of(watch.reader, metric_definitions(self.spec), self.rule)

    def keep_only(self, trials: Iterable[str]) -> None:
        alive = set(trials)
        for name in [n for n in self._watches if n not in alive]:
            del self._watches[name]

    def __len__(self) -> int:
        return len(self._watches)


class ReferenceCurves:
    """Curves of trials that finished their training, read once each and kept small."""

    def __init__(self, spec: NASExperimentSpec, rule: EarlyStopping, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.spec = spec
        self.rule = rule
        self.limits = limits
        self._curves: dict[int, TrialCurves | None] = {}

    def get(self, index: int, log_dir: Path) -> TrialCurves | None:
        if index not in self._curves:
            try:
                self._curves[index] = read_curves(self.spec, self.rule, log_dir, self.limits)
            except Exception:  # a reference that cannot be read is no evidence; never a reason to fail the loop
                log.exception("reading the curves of finished trial %d under %s failed", index, log_dir)
                self._curves[index] = None
        return self._curves[index]

    def known(self) -> Mapping[int, TrialCurves | None]:
        return self._curves


def newest_subdirectory(parent: Path) -> Path | None:
    """The most recently modified directory directly under `parent`, links never followed (a Kubernetes trial's pods
    each write under their own directory; the newest is the pod running now)."""
    newest: tuple[float, str] | None = None
    try:
        with os.scandir(parent) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_POD_DIRS:
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode) and (newest is None or (info.st_mtime, entry.name) > newest):
                    newest = (info.st_mtime, entry.name)
    except OSError:
        return None
    return parent / newest[1] if newest is not None else None
