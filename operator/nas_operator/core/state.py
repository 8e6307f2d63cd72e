"""The loop's own record of an experiment: one row per trial plus the experiment's phase.

This table, not Ax, is the source of truth for what was launched and how it ended; the
engine is a model fed from it. Keeping it separate lets the loop record a finished trial
while the engine is busy generating, and lets a restart tell exactly which trials were
launched (never launch one twice) and which results exist (never lose one).

Trial lifecycle:  queued -> launching -> running -> succeeded | failed | stopped | earlyStopped
`queued` trials exist in the engine (as pending) but have not been started; `launching` is
written to the store before the backend is asked to start the trial, so a crash between
the two is resolved by asking the backend whether the trial exists. `earlyStopped` is written
(with `stop_pending` in the handle) before the trial is killed, so a crash in between kills it
at the next step instead of letting it run on unrecorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nas_operator.resource.spec import NASExperimentSpec

TrialStatus = Literal["queued", "launching", "running", "succeeded", "failed", "stopped", "earlyStopped"]
ACTIVE: frozenset[str] = frozenset({"launching", "running"})
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "earlyStopped"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Stopped"})
# 2: the experiment's uid is recorded (format 1 states have none and are adopted by the first experiment that reads
# them, which then records its uid). 3: trials may be earlyStopped, with progression, projected and saved_seconds
# (an older operator refuses such a state by its format instead of failing on the new fields). 4: `prior`, the
# warm-start trials copied from earlier experiments (core/prior_trials.py); `stage`, `full_trials` and
# `search_outcome`, stage 2 (core/full_training.py).
STATE_FORMAT = 4
READABLE_FORMATS = frozenset({1, 2, 3, 4})


@dataclass
class TrialRecord:
    index: int
    name: str
    parameters: dict[str, Any]
    generator: str
    status: TrialStatus = "queued"
    attempt: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    handle: dict[str, Any] = field(default_factory=dict)
    # earlyStopped trials: how far training got, the metrics measured there (in `metrics`), the favourable end of
    # their plausible finals that the model was given (`projected`), and the training time the stop is estimated to
    # have saved.
    progression: float | None = None
    projected: dict[str, float] = field(default_factory=dict)
    saved_seconds: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class LoopState:
    experiment: str
    fingerprint: str
    # The uid of the NASExperiment object this state belongs to (empty for local runs). A state whose uid is not
    # the reader's belongs to another object of the same name (deleted and re-created): it is never used.
    uid: str = ""
    trials: dict[int, TrialRecord] = field(default_factory=dict)
    phase: str = "Pending"
    reason: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    # Seconds already spent in earlier runs (a local experiment's time budget spans resumes).
    elapsed_before: float = 0.0
    resumed_at: float | None = None
    # Warm start: earlier experiments' trials given to the model first ({source, trial, parameters, metrics} each),
    # copied when the experiment started; not trials of this experiment (no budget, front or counts).
    prior: list[dict[str, Any]] = field(default_factory=list)
    # Stage 2 (spec.fullTraining): "search" until the search ends, "full" while candidates are trained in full, then
    # "done". Full trainings are keyed by the index of the search trial they train again (named <experiment>-f<index>),
    # apart from `trials`: they are not the search's trials (no budget, no model, no proxy front).
    stage: str = "search"
    full_trials: dict[int, TrialRecord] = field(default_factory=dict)
    search_outcome: dict[str, str] = field(default_factory=dict)  # the search's phase, reason and message at its end
    # Stage 2's plan, fixed when it starts (the merged trial template, its timeout in seconds, its parallelism): an
    # edit of spec.fullTraining during stage 2 never mixes two templates in one set of full trainings.
    full_plan: dict[str, Any] = field(default_factory=dict)

    def count(self, *statuses: str) -> int:
        return sum(1 for t in self.trials.values() if t.status in statuses)

    @property
    def launched(self) -> int:
        """Trials committed to run (launching or later): what the trial budget counts."""
        return sum(1 for t in self.trials.values() if t.status != "queued")

    def by_status(self, *statuses: str) -> list[TrialRecord]:
        return [t for _, t in sorted(self.trials.items()) if t.status in statuses]

    def results(self) -> dict[int, dict[str, float]]:
        return {i: t.metrics for i, t in self.trials.items() if t.status == "succeeded"}

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["format"] = STATE_FORMAT
        document["trials"] = [asdict(t) for _, t in sorted(self.trials.items())]
        document["full_trials"] = [asdict(t) for _, t in sorted(self.full_trials.items())]
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoopState:
        if document.get("format") not in READABLE_FORMATS:
            raise ValueError(
                f"unknown state format {document.get('format')!r} (this version reads formats "
                f"{', '.join(str(f) for f in sorted(READABLE_FORMATS))})"
            )
        fields = {k: v for k, v in document.items() if k not in ("format", "trials", "full_trials")}
        trials = {t["index"]: TrialRecord(**t) for t in document["trials"]}
        full = {t["index"]: TrialRecord(**t) for t in document.get("full_trials") or []}
        return cls(trials=trials, full_trials=full, **fields)


def spec_fingerprint(spec: NASExperimentSpec) -> str:
    """Hash of what the engine was built from; budget, trial template and suspend may change freely."""
    frozen = spec.model_dump(
        mode="json",
        include={"parameters", "parameter_constraints", "objectives", "outcome_constraints", "algorithm"},
    )
    frozen["metrics"] = spec.metrics.model_dump(mode="json", include={"definitions"})
    return hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:16]


def trial_name(experiment: str, index: int) -> str:
    return f"{experiment}-t{index}"
