"""One reconcile step of an experiment, the same for `nasctl run` and the operator.

A step observes running trials, reads the metrics of finished ones, decides whether the
experiment is over (trial budget, time budget, failure rate), launches queued candidates
into free slots and asks the engine for more ahead of need. It never waits on the engine:
results go to the engine worker, candidates come back from it at a later step.

Persistence rules that make restarts safe:
- candidates are written to the store (with an engine snapshot that contains them) before
  they can be launched;
- a trial is written as `launching` before the backend is asked to start it, and the
  backend adopts a trial that already exists, so a crash in between never runs it twice;
- a finished trial's result is written to the trial table at once, even while the engine is
  busy; `reconcile_engine` replays into a restored engine whatever its snapshot missed;
- fail closed: when a save fails, nothing it would have recorded is acted on (trials marked
  `launching` go back to `queued` before the error leaves the step), so the store never lags
  behind the cluster.

Early stopping (spec.earlyStopping): each running trial's partial curves are read incrementally
at every step and judged by search/stopping_rule.py (core/stopping.py holds what that needs between
steps); a trial the rule stops is
recorded `earlyStopped` with `stop_pending` before it is killed, and the kill is retried at every
step until it went through, so neither a crash nor a refused delete leaves it running unrecorded.

A trial's own troubles stay the trial's: a metrics reader that raises, a launch refused for
good, a Job that belongs to someone else fail that trial with the reason; errors worth
retrying (the API server throttling or failing) keep it `launching` and retry with backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nas_operator.core.backend import Backend, LaunchError, Observation, TransientLaunchError, render_launch
from nas_operator.core.convergence import ConvergenceCheck, check_convergence
from nas_operator.core.faults import crash_point
from nas_operator.core.full_training import full_trial_name, low_correlations, rank_correlation, select_candidates
from nas_operator.core.metrics import MetricsError, read_trial_metrics
from nas_operator.core.state import ACTIVE, TERMINAL_PHASES, LoopState, TrialRecord, trial_name
from nas_operator.core.stopping import TrialStopper
from nas_operator.resource.spec import NASExperimentSpec, TrialTemplate
from nas_operator.resource.spec_checks import full_training_template, parse_duration
from nas_operator.search.engine import Engine, PriorObservation, TrialOutcome, TrialOutcomeStatus
from nas_operator.search.stopping_rule import Verdict
from nas_operator.search.worker import EngineWorker

log = logging.getLogger(__name__)
# Retrying a launch the API server refused for now (429, 5xx, a timeout): exponential backoff, then the trial fails.
LAUNCH_RETRY_FIRST_SECONDS = 2.0
LAUNCH_RETRY_MAX_SECONDS = 60.0
LAUNCH_RETRY_LIMIT = 8
# Asking the engine again after a generation call raised: exponential backoff (a failing model fit can cost a minute
# of CPU, and a missing package will not appear by itself), never giving up: an operator upgrade that fixes the cause
# lets the experiment go on without a person touching it.
GENERATION_RETRY_FIRST_SECONDS = 5.0
GENERATION_RETRY_MAX_SECONDS = 300.0
# Stop reasons that let running trials finish (nothing new is launched) before the experiment ends.
DRAINING_REASONS = ("BudgetExhausted", "Converged")


@dataclass(frozen=True)
class Event:
    """Something a person watching the experiment wants to know (a Kubernetes Event, a console line)."""

    reason: str
    message: str
    trial: str | None = None
    warning: bool = False


class StateStore(Protocol):
    def save(self, state: LoopState, engine_snapshot: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class StopDecision:
    phase: str
    reason: str
    message: str


_OUTCOMES: dict[str, TrialOutcomeStatus] = {
    "queued": "pending",
    "launching": "pending",
    "running": "pending",
    "succeeded": "completed",
    "failed": "failed",
    "stopped": "abandoned",
    "earlyStopped": "early_stopped",
}


def trial_outcomes(state: LoopState) -> list[TrialOutcome]:
    """The trial table as the engine is rebuilt from it on restore (the table, not Ax, is the record)."""
    return [
        TrialOutcome(
            index=t.index,
            parameters=t.parameters,
            generator=t.generator,
            status=_OUTCOMES[t.status],
            metrics=t.projected if t.status == "earlyStopped" else t.metrics,
            reason=t.reason,
        )
        for _, t in sorted(state.trials.items())
    ]


def prior_observations(state: LoopState) -> list[PriorObservation]:
    """The warm-start trials the state holds, as the engine takes them (before the experiment's own, in order)."""
    return [PriorObservation(parameters=p["parameters"], metrics=p["metrics"]) for p in state.prior]


def create_engine(spec: NASExperimentSpec, name: str, state: LoopState) -> Engine:
    """The engine of a new experiment, started from the warm-start trials its state holds (if any)."""
    return Engine.create(spec, name=name, prior=prior_observations(state))


def restore_engine(spec: NASExperimentSpec, snapshot: dict[str, Any], state: LoopState) -> Engine:
    """The engine of a stored experiment, in line with its trial table."""
    engine = Engine.restore(spec, snapshot, trial_outcomes(state), prior=prior_observations(state))
    reconcile_engine(engine, state)  # a legacy snapshot holds trials of its own that may lag behind the table
    return engine


def reconcile_engine(engine: Engine, state: LoopState) -> int:
    """Bring a restored engine in line with the trial table; returns how many fixes were applied."""
    statuses = engine.trial_statuses()
    fixes = 0
    for index, ax_status in statuses.items():
        if ax_status != "RUNNING":
            continue
        trial = state.trials.get(index)
        if trial is None:  # generated, but the table that would have launched it was never saved
            engine.abandon(index)
        elif trial.status == "succeeded":
            engine.complete(index, trial.metrics)
        elif trial.status == "failed":
            engine.fail(index, trial.reason)
        elif trial.status == "stopped":
            engine.abandon(index)
        elif trial.status == "earlyStopped":
            engine.early_stop(index, trial.projected)
        else:
            continue
        fixes += 1
    return fixes


class ExperimentLoop:
    """Holds what one experiment's steps share; `step()` is the reconcile function."""

    def __init__(
        self,
        spec: NASExperimentSpec,
        state: LoopState,
        worker: EngineWorker,
        backend: Backend,
        store: StateStore,
        engine_snapshot: dict[str, Any],
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] | None = None,
        lookahead: int | None = None,
        count_downtime: bool = False,
        max_generation_failures: int | None = None,
    ) -> None:
        self.spec = spec
        self.state = state
        self.worker = worker
        self.backend = backend
        self.store = store
        self.engine_snapshot = engine_snapshot
        self.clock = clock
        self.on_event = on_event or (lambda event: None)
        self.lookahead = spec.budget.parallelism if lookahead is None else lookahead
        self.count_downtime = count_downtime
        # None (the operator): retry a failing engine forever, so fixing the cause (an upgrade) resumes the search.
        # A number (nasctl run): after that many failures in a row with nothing left running, the run fails.
        self.max_generation_failures = max_generation_failures
        self.generation_seconds: list[float] = []
        self.last_engine_error = ""
        self.generation_failures = 0  # consecutive generation calls that raised
        self._generation_error = ""
        self._generation_retry_at = 0.0
        self._starved_at: int | None = None  # results seen when a generation last proposed nothing
        self._requested_with = 0  # results seen when the request in flight was posted
        self._dirty = False
        self._concluded = False
        self._stopper: TrialStopper | None = None
        self._convergence: tuple[tuple[Any, ...], ConvergenceCheck] | None = None
        now = clock()
        if state.started_at is None:
            state.started_at = now
        state.resumed_at = now
        self._reopen_if_allowed(now)

    # ------------------------------------------------------------------ public

    @property
    def finished(self) -> bool:
        return self.state.phase in TERMINAL_PHASES

    def elapsed(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        if self.count_downtime:
            return now - (self.state.started_at or now)
        return self.state.elapsed_before + (now - (self.state.resumed_at or now))

    def update_spec(self, spec: NASExperimentSpec) -> None:
        """Take a new spec whose frozen parts are unchanged (budget, trial template, suspend)."""
        self.spec = spec
        self._reopen_if_allowed(self.clock())

    def step(self) -> bool:
        """One reconcile step; returns whether anything changed."""
        now = self.clock()
        self._concluded = False
        changed = self._absorb_worker_output(now)
        if self.state.stage == "full":
            return self._persist_if(self._full_training_step(now) or changed)
        if self.finished:
            if not self._reopen_if_allowed(now):
                return self._persist_if(changed)
            changed = True
        changed |= self._observe(now)
        changed |= self._launch_pending_launches()
        decision = self._stop_decision(now)
        if decision is not None and (self.state.count(*ACTIVE) == 0 or decision.reason not in DRAINING_REASONS):
            if not self._start_full_training(decision, now):
                self._finish_experiment(decision, now)
            return self._persist_if(True)
        changed |= self._trim_queue()
        if decision is None and not self.spec.suspend:
            changed |= self._launch_into_free_slots(now)
            self._request_candidates(now)
        changed |= self._update_phase(now)
        return self._persist_if(changed)

    def convergence(self) -> ConvergenceCheck | None:
        """spec.budget.convergence's measure now (None when not asked); computed again only when a result came in."""
        rule = self.spec.budget.convergence
        if rule is None:
            return None
        done = self.state.by_status("succeeded")
        key = (rule, len(done), max((t.finished_at or 0.0 for t in done), default=0.0))
        if self._convergence is None or self._convergence[0] != key:
            self._convergence = (key, check_convergence(self.spec, self.state, rule))
        return self._convergence[1]

    def next_due(self, now: float, poll_seconds: float) -> float | None:
        """Seconds until a decision that no event announces falls due; None when only events matter.

        The operator steps an experiment when one of its Jobs or Pods changed, its spec changed or its engine has
        output; this is the rest: a trial or time budget running out, a launch or generation retry, a pod that may
        be stuck past the pending timeout (`backend.next_check`), and the early-stopping rule, which reads training
        curves that change without any API event (every `poll_seconds` while trials run).
        """
        deadlines: list[float] = []
        if self.state.stage == "full":
            plan = self._full_plan()
            timeout = plan["timeout"]
            active = [t for t in self.state.full_trials.values() if t.status in ACTIVE]
            queued = any(t.status == "queued" for t in self.state.full_trials.values())
            if queued and not self.spec.suspend and len(active) < int(plan["parallelism"]):
                return 0.0  # stage 2 just began (or a slot freed): launch now, not at the next event
        elif self.finished:
            return None
        else:
            timeout = parse_duration(self.spec.budget.trial_timeout) if self.spec.budget.trial_timeout else None
            active = self.state.by_status(*ACTIVE)
            if self.spec.budget.max_duration is not None:
                deadlines.append(now + parse_duration(self.spec.budget.max_duration) - self.elapsed(now))
            if self._generation_retry_at > now:
                deadlines.append(self._generation_retry_at)
            if self.spec.early_stopping is not None and self.state.count("running"):
                deadlines.append(now + poll_seconds)
            if any(t.handle.get("stop_pending") for t in self.state.by_status("earlyStopped")):
                deadlines.append(now + poll_seconds)
        check = getattr(self.backend, "next_check", None)
        for trial in active:
            if trial.status == "launching":
                deadlines.append(float(trial.handle.get("retry_at", now)))
                continue
            if timeout is not None:
                deadlines.append((trial.started_at or now) + float(timeout) + 0.5)
            if check is not None and (seconds := check(trial)) is not None:
                deadlines.append(now + seconds)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def interrupt(self, message: str = "interrupted by the user") -> None:
        """Stop now, keeping every trial resumable: running ones are killed and queued again."""
        full = [t for _, t in sorted(self.state.full_trials.items()) if t.status in ACTIVE]
        for trial in [*self.state.by_status(*ACTIVE), *full]:
            self.backend.kill(trial)
            trial.status = "queued"
            trial.attempt += 1
            trial.started_at = None
            trial.handle = {}
        self.state.phase, self.state.reason, self.state.message = "Stopped", "Interrupted", message
        self.persist()

    def persist(self, purpose: str = "step") -> None:
        """Save the trial table and the engine snapshot; raises when the store refused (nothing is then acted on)."""
        self._account_time()  # so a crash loses at most the time since the last save
        crash_point(f"save:{purpose}:before")
        self.store.save(self.state, self.engine_snapshot)
        crash_point(f"save:{purpose}:after")
        self._dirty = False

    # ------------------------------------------------------------------ steps

    def _absorb_worker_output(self, now: float) -> bool:
        output = self.worker.poll()
        changed = False
        for error in output.errors:
            self.last_engine_error = error
            self._emit("EngineError", error, warning=True)
        self.generation_seconds.extend(output.generation_seconds)
        if output.generation_errors:
            self.generation_failures += len(output.generation_errors)
            self._generation_error = output.generation_errors[-1]
            backoff = GENERATION_RETRY_FIRST_SECONDS * 2 ** min(self.generation_failures - 1, 16)
            self._generation_retry_at = now + min(backoff, GENERATION_RETRY_MAX_SECONDS)
        elif output.candidates:
            self.generation_failures, self._generation_error, self._generation_retry_at = 0, "", 0.0
        if output.candidates:
            self._starved_at = None
        elif output.empty_generations:
            self._starved_at = self._requested_with  # the results it was asked with, not those seen since
        if output.snapshot is not None:
            self.engine_snapshot = output.snapshot
            changed = True
        for candidate in output.candidates:
            name = trial_name(self.state.experiment, candidate.index)
            self.state.trials[candidate.index] = TrialRecord(
                index=candidate.index,
                name=name,
                parameters=candidate.parameters,
                generator=candidate.generator,
                status="queued",
                created_at=now,
            )
            changed = True
        if output.candidates:
            self.persist("candidates")  # the snapshot that holds these candidates is in hand: store both first
        return changed

    def _observe(self, now: float) -> bool:
        changed = self._finish_pending_stops()
        timeout = parse_duration(self.spec.budget.trial_timeout) if self.spec.budget.trial_timeout else None
        running = self.state.by_status("running")
        stopper = self._trial_stopper()
        if stopper is not None:
            stopper.begin_step(running)
        for trial in running:
            observation = self.backend.poll(trial)
            if observation.handle is not None:
                trial.handle = observation.handle
                if stopper is not None:
                    stopper.forget(trial.name)  # a retry starts its curves again
                changed = True
                if observation.message:
                    self._emit("TrialRetried", observation.message, trial.name, warning=True)
            if observation.status == "running":
                started = trial.started_at or now
                if timeout is not None and now - started > timeout:
                    self.backend.kill(trial)
                    self._finish_trial(trial, "failed", now, reason=f"timed out after {timeout:g}s and was killed")
                    changed = True
                elif stopper is not None and (verdict := stopper.verdict(trial, self.state)) and verdict.stop:
                    self._stop_early(trial, verdict, stopper, now)
                    changed = True
                continue
            self._conclude(trial, observation, now)
            changed = True
        return changed

    def _conclude(self, trial: TrialRecord, observation: Observation, now: float) -> None:
        self._concluded = True
        if observation.status == "succeeded":
            log_dir = observation.log_dir or self.backend.log_dir(self.state.experiment, trial.name)
            try:
                metrics = read_trial_metrics(self.spec, log_dir, observation.termination_message)
            except MetricsError as exc:
                self._finish_trial(trial, "failed", now, reason=f"metrics: {exc}")
            except Exception as exc:  # a reader bug or a hostile file: this trial fails, the step goes on
                log.exception("reading the metrics of %s failed", trial.name)
                self._finish_trial(trial, "failed", now, reason=f"metrics: unreadable: {type(exc).__name__}: {exc}")
            else:
                if observation.log_dir is not None:  # where its curves are, should it serve as a stopping reference
                    trial.handle = {**trial.handle, "metrics_dir": str(observation.log_dir)}
                self._finish_trial(trial, "succeeded", now, metrics=metrics)
        elif observation.status == "missing":
            self._finish_trial(trial, "failed", now, reason=f"trial vanished: {observation.message}")
        else:
            self._finish_trial(trial, "failed", now, reason=observation.message or "failed")

    def _finish_trial(
        self,
        trial: TrialRecord,
        status: str,
        now: float,
        metrics: dict[str, float] | None = None,
        reason: str = "",
    ) -> None:
        trial.status = status  # type: ignore[assignment]
        trial.finished_at = now
        trial.reason = reason
        if metrics is not None:
            trial.metrics = metrics
        if status == "succeeded":
            self.worker.complete(trial.index, trial.metrics)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(trial.metrics.items()))
            self._emit("TrialSucceeded", shown, trial.name)
        elif status == "failed":
            self.worker.fail(trial.index, reason)
            self._emit("TrialFailed", reason, trial.name, warning=True)
        else:
            self.worker.abandon(trial.index)
            self._emit("TrialStopped", reason, trial.name)

    # ------------------------------------------------------------------ early stopping

    def _trial_stopper(self) -> TrialStopper | None:
        """The early-stopping state, made anew when the rule changed (it is not frozen in a running experiment)."""
        rule = self.spec.early_stopping
        if rule is None:
            self._stopper = None
        elif self._stopper is None or self._stopper.rule != rule:
            self._stopper = TrialStopper(self.spec, rule, self.backend)
        return self._stopper

    def _stop_early(self, trial: TrialRecord, verdict: Verdict, stopper: TrialStopper, now: float) -> None:
        """Record the decision (stop pending), save it, then kill: a crash in between kills it at the next step."""
        before = (trial.status, trial.handle, trial.finished_at, trial.reason, trial.metrics)
        trial.status = "earlyStopped"
        trial.finished_at = now
        trial.reason = f"stopped early {verdict.reason}"
        trial.metrics = dict(verdict.observed)
        trial.progression = verdict.progression
        trial.projected = dict(verdict.projected)
        trial.saved_seconds = stopper.saved_seconds(trial, verdict.progression, self.state, now)
        trial.handle = {**trial.handle, "stop_pending": True}
        try:
            self.persist("early-stop")
        except BaseException:  # fail closed: what the store does not hold was never decided
            trial.status, trial.handle, trial.finished_at, trial.reason, trial.metrics = before
            trial.progression, trial.projected, trial.saved_seconds = None, {}, 0.0
            raise
        self._concluded = True
        self.worker.early_stop(trial.index, trial.projected)
        self._emit("TrialEarlyStopped", trial.reason, trial.name)
        stopper.forget(trial.name)
        self._finish_pending_stops()

    def _finish_pending_stops(self) -> bool:
        """Kill early-stopped trials whose kill has not gone through yet (refused, or a crash came first)."""
        changed = False
        for trial in self.state.by_status("earlyStopped"):
            if not trial.handle.get("stop_pending"):
                continue
            try:
                self.backend.kill(trial)
            except Exception as exc:
                log.warning("killing early-stopped trial %s failed (retried at the next step): %s", trial.name, exc)
                continue
            trial.handle = {k: v for k, v in trial.handle.items() if k != "stop_pending"}
            self._dirty = changed = True
        return changed

    def _launch_pending_launches(self) -> bool:
        """Trials marked `launching` but not started: a crash in between, or a launch the API refused for now.

        Launching again is safe: the backend adopts a trial that already exists (the create may have landed).
        """
        now = self.clock()
        pending = [t for t in self.state.by_status("launching") if t.handle.get("retry_at", 0.0) <= now]
        for trial in pending:
            self._start(trial)
        return bool(pending)

    def _start(self, trial: TrialRecord) -> None:
        now = self.clock()
        timeout = parse_duration(self.spec.budget.trial_timeout) if self.spec.budget.trial_timeout else None
        log_dir, trial_dir = self.backend.trial_paths(self.state.experiment, trial.name)
        launch = render_launch(self.state.experiment, trial, self.spec.trial, log_dir, trial_dir, timeout)
        crash_point("create:before")
        try:
            handle = self.backend.launch(launch)
        except TransientLaunchError as exc:
            self._retry_launch_later(trial, now, str(exc))
            return
        except LaunchError as exc:
            self._finish_trial(trial, "failed", now, reason=f"could not be launched: {exc}")
            return
        except Exception as exc:
            log.exception("launching %s failed", trial.name)
            self._finish_trial(trial, "failed", now, reason=f"could not be launched: {type(exc).__name__}: {exc}")
            return
        crash_point("create:after")
        trial.handle = handle
        trial.status = "running"
        trial.started_at = now
        self._emit("TrialLaunched", _short_parameters(trial.parameters), trial.name)

    def _retry_launch_later(self, trial: TrialRecord, now: float, error: str, full: bool = False) -> None:
        """Keep the trial `launching` (it holds its slot) and try again after a backoff; give up after a limit.

        `full`: a stage-2 training, which fails on its own (never through the engine).
        """
        tries = int(trial.handle.get("launch_tries", 0)) + 1
        if tries >= LAUNCH_RETRY_LIMIT:
            finish = self._finish_full if full else self._finish_trial
            finish(trial, "failed", now, reason=f"could not be launched after {tries} tries: {error}")
            return
        delay = min(LAUNCH_RETRY_MAX_SECONDS, LAUNCH_RETRY_FIRST_SECONDS * 2 ** (tries - 1))
        trial.handle = {**trial.handle, "launch_tries": tries, "retry_at": now + delay}
        self._dirty = True
        self._emit("TrialLaunchRetry", f"try {tries} failed ({error}); retrying in {delay:.0f}s", trial.name, True)

    def _launch_into_free_slots(self, now: float) -> bool:
        free = self.spec.budget.parallelism - self.state.count(*ACTIVE)
        ready = self.state.by_status("queued")[: max(0, free)]
        if not ready:
            return False
        for trial in ready:
            trial.status = "launching"
        try:
            self.persist("launch")  # before any backend call: a restart then knows these were meant to start
        except BaseException:
            for trial in ready:  # fail closed: what the store does not know was never launched
                trial.status = "queued"
            raise
        for trial in ready:
            self._start(trial)
        return True

    def _trim_queue(self) -> bool:
        """Drop queued candidates beyond a lowered trial budget; they were never launched."""
        excess = self.state.launched + self.state.count("queued") - self.spec.budget.max_trials
        if excess <= 0:
            return False
        for trial in reversed(self.state.by_status("queued")):
            if excess == 0:
                break
            self.worker.abandon(trial.index)
            del self.state.trials[trial.index]
            excess -= 1
        return True

    def _results_seen(self) -> int:
        return len(self.state.trials) - self.state.count(*ACTIVE, "queued")

    def _request_candidates(self, now: float) -> None:
        if self.worker.generating or now < self._generation_retry_at:
            return
        if self._starved_at is not None and self._starved_at == self._results_seen():
            return  # the engine proposed nothing with these results (its model needs more): wait for the next one
        queued = self.state.count("queued")
        remaining = self.spec.budget.max_trials - self.state.launched - queued
        free = self.spec.budget.parallelism - self.state.count(*ACTIVE)
        wanted = min(max(0, free) + self.lookahead - queued, remaining)
        if wanted > 0:
            self._requested_with = self._results_seen()
            self.worker.request(wanted)

    def _stop_decision(self, now: float) -> StopDecision | None:
        budget = self.spec.budget
        failed = self.state.count("failed")
        succeeded = self.state.count("succeeded")
        finished = failed + succeeded
        if failed >= budget.min_failed_trials and failed / finished > budget.max_failure_rate:
            return StopDecision(
                "Failed",
                "FailureRateExceeded",
                f"{failed} of {finished} finished trials failed (limit {budget.max_failure_rate:.0%} once "
                f"{budget.min_failed_trials} have failed)",
            )
        if budget.max_duration is not None:
            limit = parse_duration(budget.max_duration)
            if self.elapsed(now) >= limit:
                return StopDecision(
                    "Succeeded" if succeeded else "Failed",
                    "TimeBudgetExceeded",
                    f"ran {self.elapsed(now):.0f}s of a {limit:.0f}s budget; {succeeded} trials succeeded",
                )
        if self.state.launched >= budget.max_trials:
            return StopDecision(
                "Succeeded" if succeeded else "Failed",
                "BudgetExhausted",
                f"all {budget.max_trials} trials ran: {succeeded} succeeded, {failed} failed"
                + (f", {early} stopped early" if (early := self.state.count("earlyStopped")) else ""),
            )
        convergence = self.convergence()
        if convergence is not None and convergence.converged:
            return StopDecision("Succeeded", "Converged", convergence.message)
        if (
            self.max_generation_failures is not None
            and self.generation_failures >= self.max_generation_failures
            and not self.state.count(*ACTIVE, "queued")
        ):
            return StopDecision(
                "Failed",
                "GenerationFailed",
                f"the engine could not propose candidates {self.generation_failures} times in a row: "
                f"{self._generation_error}"[:1000],
            )
        return None

    def _finish_experiment(self, decision: StopDecision, now: float) -> None:
        for trial in self.state.by_status(*ACTIVE):
            self.backend.kill(trial)
            self._finish_trial(trial, "stopped", now, reason=f"stopped: {decision.reason}")
        for trial in self.state.by_status("queued"):
            self.worker.abandon(trial.index)
            del self.state.trials[trial.index]
        self.state.phase, self.state.reason, self.state.message = decision.phase, decision.reason, decision.message
        self.state.finished_at = now
        self._emit(decision.reason, decision.message, warning=decision.phase == "Failed")

    def _reopen_if_allowed(self, now: float) -> bool:
        """A finished experiment whose stop condition no longer holds (budget raised, resumed) goes on."""
        if self.finished and self.state.stage == "full" and self.state.reason == "Interrupted":
            self.state.phase, self.state.reason, self.state.message = "Running", "FullTraining", ""
            self.state.finished_at, self.state.resumed_at = None, self.clock()
            self._emit("Resumed", "stage 2 (full training) continues")
            return True
        if self.finished and self.state.reason == "Interrupted" and not self.spec.suspend:
            # Always resumed: the next step applies whatever stop decision holds (it may have been draining when
            # interrupted, with trials put back in the queue that must still run or be dropped).
            self._reopen()
            return True
        if not self.finished or self.state.reason == "InvalidSpec" or self._stop_decision(now) is not None:
            return False
        if self.spec.suspend and self.state.reason == "Suspended":
            return False
        self._reopen()
        return True

    def _reopen(self) -> None:
        self.state.stage = "search"  # a search that goes on may change the candidates: stage 2 follows it again
        self.state.phase = "Running" if self.state.launched else "Pending"
        self.state.reason, self.state.message, self.state.finished_at = "Resumed", "", None
        self.state.resumed_at = self.clock()
        self._emit("Resumed", "the experiment continues")

    def _update_phase(self, now: float) -> bool:
        before = (self.state.phase, self.state.reason, self.state.message)
        active = self.state.count(*ACTIVE)
        if self.spec.suspend:
            if active == 0:
                self.state.phase, self.state.reason = "Stopped", "Suspended"
                self.state.message = "spec.suspend is true: no trial is launched"
            else:
                self.state.phase, self.state.reason = "Running", "Suspending"
                self.state.message = f"spec.suspend is true: waiting for {active} running trial(s)"
        elif self._generation_error and not self.state.count("queued"):
            self.state.phase = "Running" if self.state.launched else self.state.phase
            self.state.reason = "GenerationFailed"
            self.state.message = (
                f"the engine could not propose candidates ({self.generation_failures} attempt(s), retried with "
                f"backoff; {active} trial(s) running): {self._generation_error}"
            )[:1000]
        elif self.state.launched:
            self.state.phase = "Running"
            self.state.reason = "TrialsRunning" if active else "WaitingForCandidates"
            self.state.message = ""
        return (self.state.phase, self.state.reason, self.state.message) != before

    # ------------------------------------------------------------------ stage 2: full training

    def _start_full_training(self, decision: StopDecision, now: float) -> bool:
        """When a search that succeeded ends and spec.fullTraining asks for it, begin stage 2 instead of finishing.

        Returns False when there is nothing to train (no stage 2, a failed search, every candidate trained already).
        """
        stage = self.spec.full_training
        if stage is None or decision.phase != "Succeeded":
            return False
        chosen = select_candidates(self.spec, self.state.results(), stage.candidates)
        new = [index for index in chosen if index not in self.state.full_trials]
        if not new:
            return False
        for trial in self.state.by_status(*ACTIVE):  # a time budget's stop: search trials still running end here
            self.backend.kill(trial)
            self._finish_trial(trial, "stopped", now, reason=f"stopped: {decision.reason}")
        for trial in self.state.by_status("queued"):
            self.worker.abandon(trial.index)
            del self.state.trials[trial.index]
        for index in new:
            source = self.state.trials[index]
            self.state.full_trials[index] = TrialRecord(
                index=index,
                name=full_trial_name(self.state.experiment, index),
                parameters=dict(source.parameters),
                generator="FullTraining",
                status="queued",
                created_at=now,
            )
        self.state.search_outcome = {"phase": decision.phase, "reason": decision.reason, "message": decision.message}
        self.state.full_plan = self._plan_from_spec()
        self.state.stage = "full"
        self.state.phase, self.state.reason = "Running", "FullTraining"
        self.state.message = f"the search ended ({decision.reason}); {len(new)} candidate(s) to train in full"
        self._emit("FullTrainingStarted", f"{decision.message}; training in full: " + ", ".join(f"t{i}" for i in new))
        return True

    def _full_training_step(self, now: float) -> bool:
        records = [t for _, t in sorted(self.state.full_trials.items())]
        changed = self._finish_pending_stops()  # an early-stopped search trial whose kill has not gone through yet
        plan = self._full_plan()
        timeout: float | None = plan["timeout"]
        for trial in [t for t in records if t.status == "running"]:
            observation = self.backend.poll(trial)
            if observation.handle is not None:
                trial.handle, changed = observation.handle, True
            if observation.status == "running":
                if timeout is not None and now - (trial.started_at or now) > timeout:
                    self.backend.kill(trial)
                    self._finish_full(trial, "failed", now, reason=f"timed out after {timeout:g}s and was killed")
                    changed = True
                continue
            self._conclude_full(trial, observation, now)
            changed = True
        for trial in [t for t in records if t.status == "launching" and t.handle.get("retry_at", 0.0) <= now]:
            self._start_full(trial, timeout)
            changed = True
        free = int(plan["parallelism"]) - sum(1 for t in records if t.status in ACTIVE)
        ready = [t for t in records if t.status == "queued"][: max(0, free)] if not self.spec.suspend else []
        if ready:
            for trial in ready:
                trial.status = "launching"
            try:
                self.persist("launch")  # before any backend call, as for the search's trials
            except BaseException:
                for trial in ready:
                    trial.status = "queued"
                raise
            for trial in ready:
                self._start_full(trial, timeout)
            changed = True
        left = sum(1 for t in records if t.status in ("queued", "launching", "running"))
        if left == 0:
            self._finish_full_training(now)
            return True
        done = sum(1 for t in records if t.status == "succeeded")
        message = f"stage 2: {done} of {len(records)} candidate(s) trained in full, {left} to go"
        if message != self.state.message:
            self.state.message, changed = message, True
        return changed

    def _full_plan(self) -> dict[str, Any]:
        """The plan stage 2 started with (a state saved before plans were kept: the spec's, as it is now)."""
        return self.state.full_plan or self._plan_from_spec()

    def _plan_from_spec(self) -> dict[str, Any]:
        """Stage 2's plan from the spec now: the merged template, its timeout in seconds, its parallelism."""
        stage = self.spec.full_training
        limit = (stage.trial_timeout if stage is not None else None) or self.spec.budget.trial_timeout
        return {
            "template": full_training_template(self.spec).model_dump(mode="json", by_alias=True, exclude_none=True),
            "timeout": parse_duration(limit) if limit else None,
            "parallelism": (stage.parallelism if stage is not None else None) or self.spec.budget.parallelism,
        }

    def _start_full(self, trial: TrialRecord, timeout: float | None) -> None:
        now = self.clock()
        log_dir, trial_dir = self.backend.trial_paths(self.state.experiment, trial.name)
        template = TrialTemplate.model_validate(self._full_plan()["template"])
        launch = render_launch(self.state.experiment, trial, template, log_dir, trial_dir, timeout)
        launch.env["NAS_STAGE"] = "full"
        crash_point("create:before")
        try:
            handle = self.backend.launch(launch)
        except TransientLaunchError as exc:
            self._retry_launch_later(trial, now, str(exc), full=True)
            return
        except Exception as exc:  # refused for good (LaunchError) or a bug: this candidate fails, the rest go on
            log.warning("launching %s failed: %s", trial.name, exc)
            self._finish_full(trial, "failed", now, reason=f"could not be launched: {type(exc).__name__}: {exc}")
            return
        crash_point("create:after")
        trial.handle, trial.status, trial.started_at = handle, "running", now
        self._emit("FullTrainingLaunched", _short_parameters(trial.parameters), trial.name)

    def _conclude_full(self, trial: TrialRecord, observation: Observation, now: float) -> None:
        self._concluded = True
        if observation.status != "succeeded":
            reason = f"trial vanished: {observation.message}" if observation.status == "missing" else None
            self._finish_full(trial, "failed", now, reason=reason or observation.message or "failed")
            return
        log_dir = observation.log_dir or self.backend.log_dir(self.state.experiment, trial.name)
        try:
            metrics = read_trial_metrics(self.spec, log_dir, observation.termination_message)
        except Exception as exc:  # a missing metric, a reader bug or a hostile file: this candidate fails
            self._finish_full(trial, "failed", now, reason=f"metrics: {type(exc).__name__}: {exc}")
            return
        self._finish_full(trial, "succeeded", now, metrics=metrics)

    def _finish_full(
        self, trial: TrialRecord, status: str, now: float, metrics: dict[str, float] | None = None, reason: str = ""
    ) -> None:
        """A full training's end; it never touches the search (no engine call, no search trial changes)."""
        trial.status, trial.finished_at, trial.reason = status, now, reason  # type: ignore[assignment]
        if metrics is not None:
            trial.metrics = metrics
        self._dirty = True
        if status == "succeeded":
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(trial.metrics.items()))
            self._emit("FullTrainingSucceeded", shown, trial.name)
        else:
            self._emit("FullTrainingFailed", reason, trial.name, warning=True)

    def _finish_full_training(self, now: float) -> None:
        records = self.state.full_trials.values()
        done = sum(1 for t in records if t.status == "succeeded")
        outcome = self.state.search_outcome
        taus = rank_correlation(self.spec, self.state)
        summary = f"{done} of {len(records)} candidate(s) trained in full"
        if taus:
            summary += "; Kendall's tau proxy/full: " + ", ".join(f"{m} {t:.2f}" for m, t in taus.items())
        self.state.stage = "done"
        self.state.phase = outcome.get("phase", "Succeeded")
        self.state.reason = outcome.get("reason", "BudgetExhausted")
        self.state.message = f"{outcome.get('message', '')}; {summary}"[:1000]
        self.state.finished_at = now
        self._emit("FullTrainingFinished", summary)
        self._emit(self.state.reason, self.state.message, warning=self.state.phase == "Failed")  # the experiment's end
        low = low_correlations(self.spec, taus)
        if low:
            shown = ", ".join(f"{metric} {tau:.2f}" for metric, tau in low.items())
            self._emit(
                "LowRankCorrelation", f"the proxy ranked the candidates poorly: Kendall's tau {shown}", None, True
            )

    # ------------------------------------------------------------------ helpers

    def _account_time(self) -> None:
        now = self.clock()
        if self.state.resumed_at is not None:
            self.state.elapsed_before += now - self.state.resumed_at
        self.state.resumed_at = now

    def _persist_if(self, changed: bool) -> bool:
        if changed or self._dirty:
            self.persist("result" if self._concluded else "step")
        return changed

    def _emit(self, reason: str, message: str, trial: str | None = None, warning: bool = False) -> None:
        self.on_event(Event(reason, message, trial, warning))


def _short_parameters(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in parameters.items())
