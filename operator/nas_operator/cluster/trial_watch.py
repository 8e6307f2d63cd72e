"""The trial Jobs and Pods of every experiment, kept current by watches instead of per-step GETs.

Before this cache every running trial cost a Job GET per step (every 2 s), all day long: 20 experiments with 2 sleeping
trials each made ~1,200 requests a minute. Here one list+watch per kind (per watched namespace, or one for the whole
cluster) follows the objects carrying the experiment label, the filter applied by the API server, so a cluster's
other Jobs and Pods never reach the operator. Each change wakes the experiment it belongs to (`on_change`), so a step
runs because something happened, not because a timer fired.

The cache is a hint, never the record: a Job it does not hold (a create whose watch event has not arrived yet, a
finished Job pruned after `retain_seconds`, a watch that is not synced) is read from the API server by the backend,
so a stale or partial cache can delay a step, never make it conclude wrongly. Reads hand out the client's model
objects as `read_namespaced_job` returns them, so the backend's logic is the same either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nas_operator.backends.kubernetes import LABEL_CONTROLLER_UID, LABEL_EXPERIMENT, job_ended

log = logging.getLogger(__name__)
# The server ends each watch after about this long; the next starts from the last resourceVersion seen (no relist).
WATCH_SECONDS = 300
RETRY_MAX_SECONDS = 30.0
# Watches that broke this many times in a row make the cache stop vouching for their scope until a relist.
UNSYNC_AFTER_FAILURES = 3


@dataclass
class _Kind:
    """One watched kind: its objects by (namespace, name), and whether each watch behind it has listed once."""

    name: str
    objects: dict[tuple[str, str], Any] = field(default_factory=dict)
    finished_at: dict[tuple[str, str], float] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)  # the scopes ("" = every namespace) whose first list is in


class TrialObjects:
    """Jobs and Pods labelled with an experiment, from list+watch; thread-safe.

    `namespaces` None follows the whole cluster with one watch per kind (the chart's ClusterRole); a list follows
    each namespace (the chart's per-namespace Roles). A watch that is refused (403) stays unsynced and retries with
    backoff: the backend then reads from the API server as before, so missing RBAC degrades cost, not correctness.
    """

    def __init__(
        self,
        api_client: Any,
        namespaces: Sequence[str] | None,
        on_change: Callable[[str, str], None],
        *,
        request_timeout: float = 30.0,
        retain_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.batch: Any = client.BatchV1Api(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.scopes = list(namespaces) if namespaces else [""]
        self.on_change = on_change
        self.request_timeout = request_timeout
        self.retain_seconds = retain_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs = _Kind("jobs")
        self._pods = _Kind("pods")
        self._pods_by_job: dict[tuple[str, str], set[str]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for kind in (self._jobs, self._pods):
            for scope in self.scopes:
                thread = threading.Thread(
                    target=self._run, args=(kind, scope), name=f"nas-watch-{kind.name}-{scope or 'all'}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    @property
    def synced(self) -> bool:
        with self._lock:
            return all(len(kind.synced) == len(self.scopes) for kind in (self._jobs, self._pods))

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ------------------------------------------------------------------ reads

    def job(self, namespace: str, name: str) -> Any | None:
        """The cached Job, or None when the cache cannot vouch for it (then the caller reads the API server)."""
        with self._lock:
            if self._scope_of(namespace) not in self._jobs.synced:
                return None
            return self._jobs.objects.get((namespace, name))

    def pods(self, namespace: str, job_uid: str) -> list[Any] | None:
        """The cached pods of the Job with that uid, or None when the pod watch is not synced."""
        with self._lock:
            if self._scope_of(namespace) not in self._pods.synced:
                return None
            names = self._pods_by_job.get((namespace, job_uid), set())
            return [
                self._pods.objects[(namespace, name)]
                for name in sorted(names)
                if (namespace, name) in self._pods.objects
            ]

    def size(self) -> tuple[int, int]:
        with self._lock:
            return len(self._jobs.objects), len(self._pods.objects)

    def _scope_of(self, namespace: str) -> str:
        return "" if self.scopes == [""] else namespace

    # ------------------------------------------------------------------ watching

    def _list_function(self, kind: _Kind, scope: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if kind is self._jobs:
            return (self.batch.list_namespaced_job, (scope,)) if scope else (self.batch.list_job_for_all_namespaces, ())
        return (self.core.list_namespaced_pod, (scope,)) if scope else (self.core.list_pod_for_all_namespaces, ())

    def _run(self, kind: _Kind, scope: str) -> None:
        from kubernetes import watch as untyped_watch
        from kubernetes.client.exceptions import ApiException

        watch: Any = untyped_watch  # the client's watch module has no type hints
        function, args = self._list_function(kind, scope)
        version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = function(*args, label_selector=LABEL_EXPERIMENT, _request_timeout=self.request_timeout)
                    version = listed.metadata.resource_version
                    self._replace(kind, scope, listed.items)
                watcher = watch.Watch()
                for event in watcher.stream(
                    function,
                    *args,
                    label_selector=LABEL_EXPERIMENT,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=(self.request_timeout, WATCH_SECONDS + self.request_timeout),
                ):
                    if self._stop.is_set():
                        watcher.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "BOOKMARK":  # the client leaves a bookmark's object a plain dict
                        version = watcher.resource_version or version
                        continue
                    self._apply(kind, event["type"], obj)
                    version = obj.metadata.resource_version or version
                failures = 0
                self._prune(kind)
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is older than the server keeps: list again
                    version = None
                    continue
                failures += 1
                version = None  # relist once the watch is allowed again: events were missed meanwhile
                self._unsync(kind, scope)
                log.warning(
                    "watch of %s in %s failed (%s %s); retrying", kind.name, scope or "all", exc.status, exc.reason
                )
                self._stop.wait(min(RETRY_MAX_SECONDS, 2.0**failures))
            except Exception as exc:  # a dropped connection: resume from the last version seen
                failures += 1
                log.warning("watch of %s in %s broke (%s); resuming", kind.name, scope or "all", exc)
                if failures >= UNSYNC_AFTER_FAILURES:  # not a blip: stop vouching for what may be stale, relist
                    version = None
                    self._unsync(kind, scope)
                self._stop.wait(min(RETRY_MAX_SECONDS, 0.5 * 2.0**failures))

    def _unsync(self, kind: _Kind, scope: str) -> None:
        """Stop vouching for a scope, and wake its experiments: their steps now read the API server, and their
        timers (backend.next_check) must be computed again for a cache that is down."""
        with self._lock:
            was_synced = scope in kind.synced
            kind.synced.discard(scope)
            touched = {_experiment_of(o) for key, o in kind.objects.items() if not scope or key[0] == scope}
        if was_synced:
            self._notify(touched)

    def _replace(self, kind: _Kind, scope: str, items: list[Any]) -> None:
        """A fresh list: the scope's objects become exactly these; every experiment whose objects differ is woken."""
        fresh = {(o.metadata.namespace, o.metadata.name): o for o in items}
        touched: set[tuple[str, str]] = set()
        with self._lock:
            old = {key: obj for key, obj in kind.objects.items() if not scope or key[0] == scope}
            for key, obj in old.items():
                if key not in fresh:
                    self._remove(kind, key)
                    touched.add(_experiment_of(obj))
            for key, obj in fresh.items():
                before = old.get(key)
                if before is None or before.metadata.resource_version != obj.metadata.resource_version:
                    self._store(kind, key, obj)
                    touched.add(_experiment_of(obj))
            kind.synced.add(scope)
        self._notify(touched)

    def _apply(self, kind: _Kind, kind_of_event: str, obj: Any) -> None:
        key = (obj.metadata.namespace, obj.metadata.name)
        with self._lock:
            if kind_of_event == "DELETED":
                self._remove(kind, key)
            else:
                self._store(kind, key, obj)
        self._notify({_experiment_of(obj)})

    def _store(self, kind: _Kind, key: tuple[str, str], obj: Any) -> None:
        previous = kind.objects.get(key)
        if kind is self._pods and previous is not None:
            self._unindex_pod(key, previous)
        kind.objects[key] = obj
        if kind is self._pods:
            uid = (obj.metadata.labels or {}).get(LABEL_CONTROLLER_UID)
            if uid:
                self._pods_by_job.setdefault((key[0], uid), set()).add(key[1])
        if _finished(kind, obj):
            kind.finished_at.setdefault(key, self.clock())
        else:
            kind.finished_at.pop(key, None)

    def _remove(self, kind: _Kind, key: tuple[str, str]) -> None:
        obj = kind.objects.pop(key, None)
        kind.finished_at.pop(key, None)
        if kind is self._pods and obj is not None:
            self._unindex_pod(key, obj)

    def _unindex_pod(self, key: tuple[str, str], obj: Any) -> None:
        uid = (obj.metadata.labels or {}).get(LABEL_CONTROLLER_UID)
        names = self._pods_by_job.get((key[0], uid or ""))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._pods_by_job[(key[0], uid or "")]

    def _prune(self, kind: _Kind) -> None:
        """Forget objects finished longer ago than `retain_seconds`: their trials were concluded long since, and a
        read of one that was not falls back to the API server. Keeps the cache's size following activity."""
        cutoff = self.clock() - self.retain_seconds
        with self._lock:
            for key in [key for key, since in kind.finished_at.items() if since < cutoff]:
                self._remove(kind, key)

    def _notify(self, experiments: set[tuple[str, str]]) -> None:
        for namespace, name in experiments:
            if name:
                try:
                    self.on_change(namespace, name)
                except Exception:  # a waker that fails must not stop the watch
                    log.exception("waking %s/%s failed", namespace, name)


def _experiment_of(obj: Any) -> tuple[str, str]:
    return str(obj.metadata.namespace), str((obj.metadata.labels or {}).get(LABEL_EXPERIMENT) or "")


def _finished(kind: _Kind, obj: Any) -> bool:
    if kind.name == "pods":
        return obj.status is not None and obj.status.phase in ("Succeeded", "Failed")
    return obj.status is not None and job_ended(obj)
