"""One NASExperiment on a cluster: the loop wired to Jobs, a ConfigMap store and Kubernetes Events.

Plain synchronous code, called by the Kopf handlers from a worker thread (model fitting and
Ax's bookkeeping must never run on the event loop). It knows nothing of Kopf: the handlers
pass the object's spec in and patch the status it returns.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nas_operator.backends.kubernetes import TRIAL_LOG_MOUNT, KubernetesBackend
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.core.loop import Event, ExperimentLoop, reconcile_engine
from nas_operator.core.state import LoopState, spec_fingerprint
from nas_operator.core.status import build_status, timestamp
from nas_operator.resource.spec import API_GROUP, API_VERSION, KIND, NASExperimentSpec, NASExperimentStatus
from nas_operator.resource.spec_checks import Problem, SpecError, load_spec
from nas_operator.search.engine import Engine
from nas_operator.search.worker import ThreadedEngineWorker
from nas_operator.storage.store import ConfigMapStore, StateTooLarge
from nas_operator.storage.store_sql import SQLStore

log = logging.getLogger(__name__)
TRIAL_OUTCOMES = {"TrialSucceeded": "succeeded", "TrialFailed": "failed", "TrialStopped": "stopped"}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def failed_status(reason: str, message: str, generation: int | None) -> NASExperimentStatus:
    """A status for an experiment that cannot run at all (InvalidSpec, StateTooLarge)."""
    return NASExperimentStatus(
        phase="Failed",
        reason=reason,
        message=message,
        observed_generation=generation,
        conditions=[
            {  # type: ignore[list-item]
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": timestamp(datetime.now(UTC).timestamp()),
            }
        ],
    )


class ExperimentController:
    def __init__(
        self, api_client: Any, namespace: str, name: str, uid: str, telemetry: Telemetry | None = None
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core: Any = client.CoreV1Api(api_client)
        self.namespace, self.name, self.uid = namespace, name, uid
        self.owner = owner_reference(name, uid)
        self.metrics_root = Path(os.environ.get("NAS_METRICS_ROOT", TRIAL_LOG_MOUNT))
        self.store: ConfigMapStore | SQLStore | None = None
        self.loop: ExperimentLoop | None = None
        self.worker: ThreadedEngineWorker | None = None
        self.previous: NASExperimentStatus | None = None
        self.telemetry = telemetry

    def step(self, spec_document: dict[str, Any], generation: int | None) -> dict[str, Any]:
        """One reconcile step; returns the status to patch."""
        started = time.monotonic()
        try:
            status = self._step(spec_document, generation)
        except Exception:
            if self.telemetry is not None:
                self.telemetry.count_error(self.namespace, self.name)
            raise
        if self.telemetry is not None:
            self.telemetry.observe_step(self.namespace, self.name, time.monotonic() - started)
            size = self.store.last_size if self.store is not None else 0
            self.telemetry.observe_status(self.namespace, self.name, status, size)
        return status.model_dump(mode="json", by_alias=True, exclude_none=True)

    def _step(self, spec_document: dict[str, Any], generation: int | None) -> NASExperimentStatus:
        try:
            spec = load_spec(spec_document)
        except SpecError as exc:
            return failed_status("InvalidSpec", str(exc), generation)
        try:
            loop = self._loop(spec)
            loop.update_spec(spec)
            loop.step()
        except StateTooLarge as exc:
            return failed_status("StateTooLarge", str(exc), generation)
        except SpecError as exc:
            return failed_status("InvalidSpec", str(exc), generation)
        status = build_status(spec, loop.state, generation, self.previous)
        self.previous = status
        return status

    def _open_store(self, spec: NASExperimentSpec) -> ConfigMapStore | SQLStore:
        """The store the spec names: the experiment's ConfigMap, or a database whose URL is in a Secret."""
        if spec.storage.type != "sql":
            return ConfigMapStore(self.core, self.namespace, self.name, owner_reference=self.owner)
        reference = spec.storage.secret_ref
        assert reference is not None  # spec_checks requires it for sql
        secret = self.core.read_namespaced_secret(reference.name, self.namespace)
        encoded = (secret.data or {}).get(reference.key)
        if encoded is None:
            raise SpecError(
                [Problem("spec.storage.secretRef.key", f'Secret {reference.name} has no key "{reference.key}"')]
            )
        return SQLStore(base64.b64decode(encoded).decode(), self.namespace, self.name)

    def _loop(self, spec: NASExperimentSpec) -> ExperimentLoop:
        if self.loop is not None:
            return self.loop
        fingerprint = spec_fingerprint(spec)
        self.store = self._open_store(spec)
        stored = self.store.load()
        if stored is None:
            state = LoopState(experiment=self.name, fingerprint=fingerprint)
            engine = Engine.create(spec, name=self.name)
        else:
            if stored.state.fingerprint != fingerprint:
                # The CRD's immutability rules refuse such an update; this guards a CRD without them.
                raise SpecError(
                    [Problem("spec", "search space, objectives or algorithm changed after the experiment started")]
                )
            state = stored.state
            engine = Engine.restore(spec, stored.engine)
            reconcile_engine(engine, state)
        backend = KubernetesBackend(self.api_client, self.namespace, spec, self.owner, self.metrics_root)
        self.worker = ThreadedEngineWorker(engine, on_generation=self._generated)
        self.loop = ExperimentLoop(
            spec,
            state,
            self.worker,
            backend,
            self.store,
            engine.snapshot(),
            on_event=self._event,
            count_downtime=True,
        )
        return self.loop

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
            self.core.create_namespaced_event(self.namespace, body)
        except Exception as exc:  # an Event is informative; losing one must not stop the experiment
            log.warning("could not post event %s: %s", event.reason, exc)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    def delete_state(self, spec_document: dict[str, Any]) -> None:
        """Remove the stored state (the finalizer's job); a spec too broken to name its store has none."""
        self.close()
        if self.telemetry is not None:
            self.telemetry.forget(self.namespace, self.name)
        if self.store is None:
            try:
                self.store = self._open_store(load_spec(spec_document))
            except SpecError:
                return
        self.store.delete()
