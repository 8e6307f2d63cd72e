"""What early stopping keeps between the steps of one experiment, and the one question the loop asks it.

A reader per running trial (its partial curves, read incrementally), the finished trials' curves (read once, as
references), and the progression of each trial's last decision. All of it is in memory only: after a restart the
curves are read again and the decisions made again, which changes nothing (a stop already made is in the state).
The decision itself is search/stopping_rule.py's; recording and killing a stopped trial is the loop's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from nas_operator.core.backend import Backend
from nas_operator.core.progress import ReferenceCurves, RunningCurves
from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.resource.spec import EarlyStopping, NASExperimentSpec
from nas_operator.search.stopping_rule import Reference, Verdict, judge

log = logging.getLogger(__name__)


class TrialStopper:
    def __init__(self, spec: NASExperimentSpec, rule: EarlyStopping, backend: Backend) -> None:
        self.spec = spec
        self.rule = rule
        self.backend = backend
        self._running = RunningCurves(spec, rule)
        self._finished = ReferenceCurves(spec, rule)
        self._judged_at: dict[str, float] = {}  # trial -> progression of its last decision
        self._references: list[Reference] | None = None

    def begin_step(self, running: Iterable[TrialRecord]) -> None:
        """Forget trials no longer running; references are gathered again, at most once, when a decision needs them."""
        names = {t.name for t in running}
        self._running.keep_only(names)
        self._judged_at = {name: p for name, p in self._judged_at.items() if name in names}
        self._references = None

    def forget(self, trial: str) -> None:
        """The trial starts its curves again (a retry) or is done: its next decision starts afresh."""
        self._judged_at.pop(trial, None)

    def verdict(self, trial: TrialRecord, state: LoopState) -> Verdict | None:
        """The rule's verdict on the trial now, or None when there is nothing to decide yet; never raises."""
        try:
            log_dir = self.backend.live_log_dir(state.experiment, trial)
            curves = self._running.update(trial.name, log_dir) if log_dir is not None else None
            if curves is None:
                return None
            last = self._judged_at.get(trial.name)
            if last is not None and (
                curves.progression <= last or curves.progression < last + (self.rule.decision_interval or 0.0)
            ):
                return None
            verdict = judge(self.spec, self.rule, curves, self.references(state), state.results())
        except Exception:  # a reader or rule bug must not stop the loop: the trial simply runs on
            log.exception("judging %s for early stopping failed", trial.name)
            return None
        if not verdict.judged:
            return None  # judged again at the next step: references may have arrived
        self._judged_at[trial.name] = verdict.progression
        return verdict

    def references(self, state: LoopState) -> list[Reference]:
        """Succeeded trials with readable curves (a Kubernetes trial's are in the directory of its successful pod)."""
        if self._references is not None:
            return self._references
        references = []
        for trial in state.by_status("succeeded"):
            log_dir = trial.handle.get("metrics_dir") or trial.handle.get("log_dir")
            path = Path(log_dir) if log_dir else self.backend.log_dir(state.experiment, trial.name)
            curves = self._finished.get(trial.index, path)
            if curves is not None:
                references.append(Reference(trial.index, curves, trial.metrics))
        self._references = references
        return references

    def saved_seconds(self, trial: TrialRecord, progression: float, state: LoopState, now: float) -> float:
        """Training time the stop saved (an estimate): its time so far, scaled to the median reference's progression."""
        if trial.started_at is None or progression <= 0:
            return 0.0
        finals = sorted(r.curves.progression for r in self.references(state) if r.curves.progression > progression)
        if not finals:
            return 0.0
        median = finals[len(finals) // 2]
        return max(0.0, now - trial.started_at) * (median / progression - 1.0)
