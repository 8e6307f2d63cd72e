"""The watch cache of trial Jobs and Pods on the real control plane: trials observed without a request per step."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nas_operator.backends.kubernetes import KubernetesBackend
from nas_operator.cluster.api_requests import RateLimiter, RequestCounter, instrument
from nas_operator.cluster.trial_watch import TrialObjects
from tests.k8s.cluster import ControlPlane

from .test_trial_jobs_cluster import FAST, _api, _spec, _start, _termination_doc, _trial

pytestmark = pytest.mark.cluster


class _Woken:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, namespace: str, name: str) -> None:
        with self.lock:
            self.calls.append((namespace, name))

    def count(self, key: tuple[str, str]) -> int:
        with self.lock:
            return self.calls.count(key)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _counted_backend(cluster: ControlPlane, namespace: str, tmp_path: Path, objects: TrialObjects, **trial: Any):  # type: ignore[no-untyped-def]
    counter = RequestCounter()
    api = instrument(_api(cluster), RateLimiter(0, 1), counter.record)
    backend = KubernetesBackend(
        api, namespace, _spec(_termination_doc(**trial)), metrics_root=tmp_path, policy=FAST, objects=objects
    )
    return backend, counter


def test_a_trial_is_observed_from_the_watch_and_concluded_without_polling_requests(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    woken = _Woken()
    objects = TrialObjects(_api(cluster), [namespace], woken)
    objects.start()
    try:
        assert objects.wait_synced(30)
        backend, counter = _counted_backend(
            cluster, namespace, tmp_path, objects, env=[{"name": "SLEEP", "value": "3"}]
        )
        trial = _start(backend, _trial(0))
        key = (namespace, "digits-mlp")
        _wait(lambda: objects.job(namespace, trial.name) is not None, 30, "the Job in the cache")
        assert woken.count(key) >= 1  # the experiment was woken by its own Job's creation
        before = sum(counter.totals().values())
        observation = backend.poll(trial)
        polls = 1
        while observation.status == "running":
            assert sum(counter.totals().values()) == before, counter.totals_by_resource()  # no request while it runs
            time.sleep(0.2)
            observation = backend.poll(trial)
            polls += 1
        assert observation.status == "succeeded", observation
        assert observation.termination_message and "val_acc" in observation.termination_message
        # The conclusion reads its pods from the cache too, unless the pod watch lags the Job watch: then one LIST.
        assert polls > 3 and sum(counter.totals().values()) - before <= 1, counter.totals_by_resource()
        assert woken.count(key) >= 3  # created, its pod ran, it completed: each a reason to step
        assert backend.next_check(trial) is None  # ended: no timer needed
    finally:
        objects.stop()


def test_a_job_the_cache_does_not_hold_is_read_from_the_api_server(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """A cache that missed the Job (not synced, or just created) never concludes that the trial is missing."""
    objects = TrialObjects(_api(cluster), [f"{namespace}-unwatched"], _Woken())  # watches another namespace only
    backend, counter = _counted_backend(cluster, namespace, tmp_path, objects)
    trial = _start(backend, _trial(1))
    deadline = time.monotonic() + 60
    observation = backend.poll(trial)
    while observation.status == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        observation = backend.poll(trial)
    assert observation.status == "succeeded", observation
    assert counter.totals_by_resource().get(("get", "jobs"), 0) >= 1


def test_a_pod_stuck_pending_is_failed_at_the_pending_timeout_from_the_cache_with_a_timer(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """No event announces a pending timeout: next_check gives the time, and the stuck check reads cached pods."""
    objects = TrialObjects(_api(cluster), [namespace], _Woken())
    objects.start()
    try:
        assert objects.wait_synced(30)
        backend, _ = _counted_backend(cluster, namespace, tmp_path, objects, nodeSelector={"nas-test/pool": "nowhere"})
        trial = _start(backend, _trial(2))
        _wait(lambda: objects.job(namespace, trial.name) is not None, 30, "the Job in the cache")
        due = backend.next_check(trial)
        assert due is not None and 1.0 <= due <= FAST.pending_timeout_seconds + 2
        time.sleep(due)
        observation = backend.poll(trial)
        deadline = time.monotonic() + 20
        while observation.status == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            observation = backend.poll(trial)
        assert observation.status == "failed" and "Unschedulable" in observation.message, observation
    finally:
        objects.stop()


def test_objects_without_the_experiment_label_never_enter_the_cache(cluster: ControlPlane, namespace: str) -> None:
    objects = TrialObjects(_api(cluster), None, _Woken())
    objects.start()
    try:
        assert objects.wait_synced(30)
        cluster.kubectl("create", "job", "unrelated", "-n", namespace, "--image=x", "--", "python3", "-c", "pass")
        _wait(lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() != "", 30, "a pod")
        time.sleep(1)
        assert objects.job(namespace, "unrelated") is None
        assert all(ns != namespace for ns, _ in _cached_keys(objects))
    finally:
        objects.stop()


def _cached_keys(objects: TrialObjects) -> list[tuple[str, str]]:
    return [*objects._jobs.objects, *objects._pods.objects]
