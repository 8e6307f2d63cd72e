"""One NASExperiment on a cluster: the loop wired to Jobs, a ConfigMap store and Kubernetes Events.

Plain synchronous code, called by the Kopf handlers from a worker thread (model fitting and
Ax's bookkeeping must never run on the event loop). It knows nothing of Kopf: the handlers
pass the object's spec in and patch the status it returns.

The in-memory loop is a cache of the stored state, trusted only while every save succeeds:
after any error in a step (a refused save, a conflict with another writer, an API error) it is
dropped, and the next step rebuilds it from the store and the cluster. So the store never lags
behind what was launched, and an outside edit of the state is re-read instead of overwritten.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nas_operator.backends.kubernetes import TRIAL_LOG_MOUNT, KubernetesBackend, TrialObjectCache
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.core.loop import Event, ExperimentLoop, create_engine, restore_engine
from nas_operator.core.prior_trials import select_prior_trials
from nas_operator.core.state import ACTIVE, TERMINAL_PHASES, LoopState, spec_fingerprint
from nas_operator.core.status import build_status, timestamp
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    Condition,
    NASExperimentSpec,
    NASExperimentStatus,
)
from nas_operator.resource.spec_checks import NAME_RFC1123, Problem, SpecError, load_spec
from nas_operator.search.engine import Engine
from nas_operator.search.worker import ThreadedEngineWorker
from nas_operator.storage.open_store import open_store
from nas_operator.storage.store import ConfigMapStore, ForeignState, StateTooLarge, StoreConflict
from nas_operator.storage.store_sql import SQLStore

log = logging.getLogger(__name__)
# After consecutive failed steps: retry at once, then back off 2, 4, ... up to this many seconds.
FAILED_STEP_BACKOFF_MAX = 60.0
QUEUED_MESSAGE = "candidates wait for a slot of the operator's model-fit pool (shared fairly across namespaces)"
TRIAL_OUTCOMES = {
    "TrialSucceeded": "succeeded",
    "TrialFailed": "failed",
    "TrialStopped": "stopped",
    "TrialEarlyStopped": "early_stopped",
}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _since(previous: NASExperimentStatus | None, kind: str, reason: str, message: str) -> str | None:
    """The condition's transition time: kept while nothing about it changed (no PATCH per step for a stuck object)."""
    for condition in previous.conditions if previous is not None else []:
        if condition.type == kind and condition.reason == reason and condition.message == message:
            return condition.last_transition_time
    return timestamp(datetime.now(UTC).timestamp())


def failed_status(
    reason: str,
    message: str,
    generation: int | None,
    previous: NASExperimentStatus | None = None,
    phase: str = "Failed",
) -> NASExperimentStatus:
    """A status for an experiment that cannot run (InvalidSpec, StateTooLarge) or cannot run yet (ForeignState)."""
    kind = "Failed" if phase == "Failed" else "Blocked"
    return NASExperimentStatus(
        phase=phase,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        observed_generation=generation,
        conditions=[
            {  # type: ignore[list-item]
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": _since(previous, kind, reason, message),
            }
        ],
    )


def _with_store_condition(
    status: NASExperimentStatus, problem: tuple[str, str] | None, previous: NASExperimentStatus | None
) -> NASExperimentStatus:
    """Add `StateSaved`: False with the reason while steps fail, True again once one succeeds after a failure."""
    had_problem = previous is not None and any(
        c.type == "StateSaved" and c.status == "False" for c in previous.conditions
    )
    if problem is None and not had_problem:
        return status
    reason, message = problem if problem is not None else ("Saved", "the state was saved")
    condition = Condition(
        type="StateSaved",
        status="False" if problem is not None else "True",
        reason=reason,
        message=message,
        last_transition_time=_since(previous, "StateSaved", reason, message),
    )
    kept = [c for c in status.conditions if c.type != "StateSaved"]
    return status.model_copy(update={"conditions": [*kept, condition]})


@dataclass(frozen=True)
class StepTiming:
    """When an experiment is stepped besides its events (the chart's operator.* values; see `wait_seconds`)."""

    poll_seconds: float = 2.0  # early-stopping reads of training curves while trials run
    resync_seconds: float = 60.0  # a loaded experiment with nothing happening is looked at this often
    idle_evict_seconds: float = 600.0  # a loaded experiment idle this long gives its engine back (0: never)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StepTiming:
        env = dict(os.environ if env is None else env)
        values = {}
        for field_name, variable in (
            ("poll_seconds", "NAS_STEP_SECONDS"),
            ("resync_seconds", "NAS_RESYNC_SECONDS"),
            ("idle_evict_seconds", "NAS_IDLE_EVICT_SECONDS"),
        ):
            text = env.get(variable, "").strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{variable}: not a number of seconds: {text!r}") from None
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{variable}: must be a finite number of seconds >= 0, got {text!r}")
            values[field_name] = value
        return cls(**values)


def _stored_status(document: dict[str, Any] | None) -> NASExperimentStatus | None:
    """The status the object carries (written by an earlier operator process), if it parses."""
    if not document:
        return None
    try:
        return NASExperimentStatus.model_validate(document)
    except Exception:  # a hand-edited or older status: rebuilt from the store at the first step
        return None


def _with_model_queue_condition(
    status: NASExperimentStatus, waiting: bool, previous: NASExperimentStatus | None
) -> NASExperimentStatus:
    """`WaitingForModel` while the experiment's next candidates wait for a slot of the operator's fit pool."""
    if not waiting:
        return status
    reason, message = "FitQueued", QUEUED_MESSAGE
    condition = Condition(
        type="WaitingForModel",
        status="True",
        reason=reason,
        message=message,
        last_transition_time=_since(previous, "WaitingForModel", reason, message),
    )
    return status.model_copy(update={"conditions": [*status.conditions, condition]})


def _restorer(spec: NASExperimentSpec, snapshot: dict[str, Any], table: LoopState) -> Callable[[], Engine]:
    return lambda: restore_engine(spec, snapshot, table)


class ExperimentController:
    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        uid: str,
        telemetry: Telemetry | None = None,
        policy: TrialPolicy | None = None,
        request_timeout: float = 30.0,
        *,
        objects: TrialObjectCache | None = None,
        fit_slot: Callable[[threading.Event], AbstractContextManager[object]] | None = None,
        restore_slot: Callable[[], AbstractContextManager[object]] | None = None,
        wake: Callable[[], None] | None = None,
        timing: StepTiming | None = None,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core: Any = client.CoreV1Api(api_client)
        self.namespace, self.name, self.uid = namespace, name, uid
        self.owner = owner_reference(name, uid)
        self.metrics_root = Path(os.environ.get("NAS_METRICS_ROOT", TRIAL_LOG_MOUNT))
        self.policy = policy or TrialPolicy()
        self.request_timeout = request_timeout
        self.store: ConfigMapStore | SQLStore | None = None
        self.loop: ExperimentLoop | None = None
        self.worker: ThreadedEngineWorker | None = None
        self.previous: NASExperimentStatus | None = None
        self.failures = 0  # failed steps in a row
        self.retry_at = 0.0  # monotonic time before which a failing experiment is not stepped again
        self.telemetry = telemetry
        self.objects = objects
        self.fit_slot = fit_slot
        self.restore_slot = restore_slot
        self.wake = wake or (lambda: None)
        self.timing = timing or StepTiming()
        self.due_at: float | None = None  # monotonic time of the next decision no event announces
        self.evicted = False  # the loop was dropped while idle; trial events and due times bring it back
        self.deleted = False
        self._stepping = threading.Lock()  # a step and the finalizer's removal of the state never overlap
        self.last_active = time.monotonic()

    def step(
        self,
        spec_document: dict[str, Any],
        generation: int | None,
        stored_status: dict[str, Any] | None = None,
        woken: bool = True,
    ) -> dict[str, Any]:
        """One reconcile step; returns the status to patch.

        `stored_status` is the object's status (used once, after a restart, so a finished experiment is recognised
        without reading its store); `woken` is False when the step only runs because a timer expired.
        """
        started = time.monotonic()
        with self._stepping:
            if self.deleted:  # the finalizer removed the state: a late step must not write it again
                return (self.previous or NASExperimentStatus()).model_dump(
                    mode="json", by_alias=True, exclude_none=True
                )
            return self._timed_step(spec_document, generation, stored_status, woken, started)

    def _timed_step(
        self,
        spec_document: dict[str, Any],
        generation: int | None,
        stored_status: dict[str, Any] | None,
        woken: bool,
        started: float,
    ) -> dict[str, Any]:
        if self.previous is None:
            self.previous = _stored_status(stored_status)
        try:
            status = self._step(spec_document, generation, woken)
        except Exception:
            if self.telemetry is not None:
                self.telemetry.count_error(self.namespace, self.name)
            raise
        if self.telemetry is not None:
            self.telemetry.observe_step(self.namespace, self.name, time.monotonic() - started)
            size = self.store.last_size if self.store is not None else 0
            self.telemetry.observe_status(self.namespace, self.name, status, size)
        return status.model_dump(mode="json", by_alias=True, exclude_none=True)

    def wait_seconds(self) -> float | None:
        """How long the caller may wait for an event before stepping again; None: until an event (or a new spec).

        A loaded experiment is looked at every `resync_seconds` even with nothing due, as controller-runtime's
        resync does, so a missed event costs a delay, never a stall. A finished, suspended or evicted one is
        not: it holds no engine, and only an event (or a due time) loads it again.
        """
        now = time.monotonic()
        if self.retry_at > now:  # backing off after failed steps: nothing else is acted on before then
            return self.retry_at - now
        waits = []
        if self.failures and self.loop is None:
            waits.append(0.0)
        if self.due_at is not None:
            waits.append(max(0.0, self.due_at - now))
        if self.loop is not None or self._unsettled():
            waits.append(self.timing.resync_seconds)
        return min(waits) if waits else None

    def _unsettled(self) -> bool:
        """No loop, yet not at rest: a step that could not load it (a foreign state, an unreachable store)."""
        previous = self.previous
        if self.evicted:
            return False
        # InvalidSpec may fix itself (a SQL Secret or a warm-start source applied after the experiment).
        return previous is None or previous.phase not in TERMINAL_PHASES or previous.reason == "InvalidSpec"

    def _step(self, spec_document: dict[str, Any], generation: int | None, woken: bool) -> NASExperimentStatus:
        status = self._step_status(spec_document, generation, woken)
        if status != self.previous:
            self.last_active = time.monotonic()
        self.previous = status
        self._settle()
        return status

    def _at_rest(self, generation: int | None, woken: bool) -> bool:
        """Whether this step can answer with the last status without loading the experiment.

        A finished experiment (and a suspended one, whose phase is Stopped) changes only with its spec: it is
        never decoded again until then, after a restart included. An evicted one waits for an event about its
        trials or a due time.
        """
        previous = self.previous
        if self.loop is not None or previous is None or previous.observed_generation != generation:
            return False
        if previous.phase in TERMINAL_PHASES and previous.reason != "InvalidSpec":
            return True
        if self.evicted:
            return not woken and (self.due_at is None or time.monotonic() < self.due_at)
        return False

    def _settle(self) -> None:
        """Give the engine back when the experiment no longer needs it: finished, suspended, or idle too long."""
        loop, worker = self.loop, self.worker
        if loop is None or worker is None:
            return
        now = time.time()
        due = loop.next_due(now, self.timing.poll_seconds)
        self.due_at = time.monotonic() + due if due is not None else None
        if loop.finished and loop.state.stage != "full" and not loop.state.count(*ACTIVE):
            self._drop_loop()
            self.due_at = None
            return
        idle = time.monotonic() - self.last_active
        evict = self.timing.idle_evict_seconds
        if (
            evict > 0
            and idle >= evict
            and not worker.generating
            and not loop.state.count("queued", "launching")
            and (loop.spec.early_stopping is None or not loop.state.count("running"))
        ):
            log.info("%s/%s: idle for %.0fs, engine evicted to its store", self.namespace, self.name, idle)
            due_at = self.due_at
            self._drop_loop()
            self.evicted, self.due_at = True, due_at  # a trial timeout still falls due while it is out

    def _step_status(self, spec_document: dict[str, Any], generation: int | None, woken: bool) -> NASExperimentStatus:
        previous = self.previous
        if previous is not None and time.monotonic() < self.retry_at:
            return previous  # backing off after failed steps: a rebuild (an Ax restore) per step would burn the CPU
        try:
            spec = load_spec(spec_document, policy=self.policy, cluster=True)
            if not NAME_RFC1123.fullmatch(self.name):  # the CRD refuses it too; this guards a CRD without the rule
                raise SpecError(
                    [Problem("metadata.name", "must be a lowercase RFC 1123 name of at most 52 characters")]
                )
        except SpecError as exc:
            self._drop_loop()
            self._settled_failure()
            return failed_status("InvalidSpec", str(exc), generation, previous)
        if previous is not None and self._at_rest(generation, woken):
            return previous
        try:
            loop = self._loop(spec)
            loop.update_spec(spec)
            if loop.step():
                self.last_active = time.monotonic()
        except StateTooLarge as exc:
            self._drop_loop()
            self._settled_failure()
            return failed_status("StateTooLarge", str(exc), generation, previous)
        except SpecError as exc:
            self._drop_loop()
            self._settled_failure()
            return failed_status("InvalidSpec", str(exc), generation, previous)
        except ForeignState as exc:
            self._drop_loop()
            self._settled_failure()
            return failed_status("ForeignState", str(exc), generation, previous, phase="Pending")
        except Exception as exc:
            # Fail closed: whatever this step did in memory and could not save is forgotten; the next step re-reads
            # the store (a fresh resourceVersion after a conflict) and the cluster, and carries on from there.
            reason = "StoreConflict" if isinstance(exc, StoreConflict) else "StepFailed"
            self.failures += 1
            delay = 0.0 if self.failures == 1 else min(FAILED_STEP_BACKOFF_MAX, 2.0 ** (self.failures - 1))
            self.retry_at = time.monotonic() + delay
            log.warning(
                "%s/%s: step failed (%d in a row), state will be re-read in %.0fs: %s",
                self.namespace,
                self.name,
                self.failures,
                delay,
                exc,
            )
            self._drop_loop()
            problem = (reason, f"{type(exc).__name__}: {exc}"[:1024])
            if self.telemetry is not None:
                self.telemetry.count_error(self.namespace, self.name)
            if previous is None:
                return failed_status(reason, problem[1], generation, previous, phase="Pending")
            return _with_store_condition(previous, problem, previous)
        self.failures = 0
        status = build_status(spec, loop.state, generation, previous)
        waiting = self.worker is not None and self.worker.waiting_for_slot
        return _with_model_queue_condition(_with_store_condition(status, None, previous), waiting, previous)

    def _settled_failure(self) -> None:
        """An outcome that is not a failed step (a spec, size or ownership problem): no backoff retries; the
        resync timer looks again (a Secret or a warm-start source may appear), and a new spec wakes it at once."""
        self.failures, self.retry_at = 0, 0.0

    def _drop_loop(self) -> None:
        """Forget the cached loop and store; the next step rebuilds both from what is stored."""
        if self.worker is not None:
            self.worker.close()
        self.loop, self.worker, self.store = None, None, None
        self.evicted = False
        self.due_at = None

    def _open_store(self, spec: NASExperimentSpec) -> ConfigMapStore | SQLStore:
        """The store the spec names: the experiment's ConfigMap, or a database whose URL is in an opted-in Secret."""
        return open_store(
            self.core,
            self.namespace,
            self.name,
            spec,
            owner_reference=self.owner,
            uid=self.uid,
            request_timeout=self.request_timeout,
        )

    def _loop(self, spec: NASExperimentSpec) -> ExperimentLoop:
        if self.loop is not None:
            return self.loop
        fingerprint = spec_fingerprint(spec)
        self.store = self._open_store(spec)
        stored = self.store.load()
        warm_started = ""
        if stored is None:
            state = LoopState(experiment=self.name, fingerprint=fingerprint, uid=self.uid)
            if spec.warm_start is not None:
                selection = select_prior_trials(spec, self._warm_start_sources(spec.warm_start.experiments))
                state.prior = [asdict(trial) for trial in selection.trials]
                warm_started = selection.summary()
            built = create_engine(spec, self.name, state)
            engine: Engine | Callable[[], Engine] = built
            snapshot = built.snapshot()
        else:
            if stored.state.fingerprint != fingerprint:
                # The CRD's immutability rules refuse such an update; this guards a CRD without them.
                raise SpecError(
                    [Problem("spec", "search space, objectives or algorithm changed after the experiment started")]
                )
            state = stored.state
            state.uid = state.uid or self.uid  # a state from before uids were recorded is adopted
            # Ax decodes the snapshot on the engine's thread, when a result or a request first needs it, from the
            # table as it is now (what the loop does later reaches the engine as operations, in order).
            table, snapshot = copy.deepcopy(state), stored.engine
            engine = _restorer(spec, snapshot, table)
        backend = KubernetesBackend(
            self.api_client,
            self.namespace,
            spec,
            self.owner,
            self.metrics_root,
            experiment_uid=self.uid,
            policy=self.policy,
            request_timeout=self.request_timeout,
            objects=self.objects,
        )
        self.worker = ThreadedEngineWorker(
            engine,
            on_generation=self._generated,
            fit_slot=self.fit_slot,
            restore_slot=self.restore_slot,
            on_wake=self.wake,
        )
        self.loop = ExperimentLoop(
            spec,
            state,
            self.worker,
            backend,
            self.store,
            snapshot,
            on_event=self._event,
            count_downtime=True,
        )
        if warm_started:
            self._event(Event("WarmStarted", warm_started))
        return self.loop

    def _warm_start_sources(self, names: list[str]) -> list[tuple[str, LoopState]]:
        """The saved states of the experiments spec.warmStart names, all in this experiment's namespace.

        Each is opened through its own spec's store with the same rules as its own controller (a SQL store only
        through an opted-in Secret of this namespace; a state of an earlier object of that name refused). A source
        that is missing or has saved nothing is a spec problem naming it: starting cold instead would silently cost
        the user the trials the warm start was meant to save.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        objects = client.CustomObjectsApi(self.api_client)
        sources = []
        for i, name in enumerate(names):
            field = f"spec.warmStart.experiments[{i}]"
            if name == self.name:
                raise SpecError([Problem(field, "names this experiment itself")])
            try:
                source = dict(
                    objects.get_namespaced_custom_object(  # type: ignore[call-overload]
                        API_GROUP, API_VERSION, self.namespace, PLURAL, name, _request_timeout=self.request_timeout
                    )
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise SpecError(
                        [Problem(field, f"no NASExperiment {name} in namespace {self.namespace}")]
                    ) from None
                raise
            try:
                source_spec = load_spec(source.get("spec") or {}, policy=self.policy, cluster=True)
            except SpecError as exc:
                raise SpecError([Problem(field, f"NASExperiment {name} has an invalid spec: {exc}")]) from None
            uid = str((source.get("metadata") or {}).get("uid") or "")
            store = open_store(
                self.core,
                self.namespace,
                name,
                source_spec,
                owner_reference=owner_reference(name, uid),
                uid=uid,
                request_timeout=self.request_timeout,
            )
            try:
                stored = store.load()
            except ForeignState as exc:
                raise SpecError([Problem(field, f"NASExperiment {name}: {exc}")]) from None
            if stored is None:
                raise SpecError([Problem(field, f"NASExperiment {name} has saved no state yet")])
            sources.append((name, stored.state))
        return sources

    def _generated(self, seconds: float, count: int) -> None:
        if self.telemetry is not None:
            self.telemetry.observe_generation(self.namespace, self.name, seconds)

    def _observe_trial(self, event: Event) -> None:
        outcome = TRIAL_OUTCOMES.get(event.reason)
        if self.telemetry is None or outcome is None or self.loop is None:
            return
        for trial in self.loop.state.trials.values():
            if trial.name == event.trial and trial.duration is not None:
                self.telemetry.observe_trial(self.namespace, self.name, outcome, trial.duration)

    def _event(self, event: Event) -> None:
        """A Kubernetes Event on the experiment, as `kubectl describe nasx` lists them."""
        self._observe_trial(event)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = f"{event.trial}: {event.message}" if event.trial else event.message
        body = {
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "reason": event.reason,
            "message": message[:1024],
            "type": "Warning" if event.warning else "Normal",
            "source": {"component": "nas-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(self.namespace, body, _request_timeout=self.request_timeout)
        except Exception as exc:  # an Event is informative; losing one must not stop the experiment
            log.warning("could not post event %s: %s", event.reason, exc)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def delete_state(self, spec_document: dict[str, Any]) -> None:
        """Remove the stored state (the finalizer's job); a spec too broken to name its store has none.

        Raises when the store cannot be reached (the handler retries a bounded number of times, then gives up with a
        Warning Event: deletion never hangs on a Secret deleted first or a database that is gone).
        """
        with self._stepping:  # waits for a step still running (Kopf may call the finalizer while one does)
            self.deleted = True
            self._drop_loop()
        if self.telemetry is not None:
            self.telemetry.forget(self.namespace, self.name)
        if self.store is None:
            try:
                spec = load_spec(spec_document, cluster=False)
            except SpecError:
                return
            if spec.storage.type != "sql":
                return  # the ConfigMap is owned by the experiment: the garbage collector removes it with the Jobs
            self.store = self._open_store(spec)
        if isinstance(self.store, ConfigMapStore):
            return
        self.store.delete()

    def warn(self, reason: str, message: str) -> None:
        """A Warning Event on the experiment (used by the handlers, e.g. when the finalizer gives up)."""
        self._event(Event(reason, message, warning=True))
