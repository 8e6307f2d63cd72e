"""Every Kopf decorator of the operator, and nothing else.

Run with `kopf run -m nas_operator.cluster.handlers --standalone` (the operator image does). What happens where:

- One Kopf daemon per NASExperiment steps it when something happened: one of its Jobs or Pods changed (a
  watch over the operator's labelled objects, cluster/trial_watch.py), its spec changed (`observe` below),
  its engine has candidates, or a decision falls due (a timeout, a retry; `ExperimentController.wait_seconds`).
  An experiment with nothing happening makes no API request; a finished one holds no engine at all.
- Steps run on a bounded pool of threads (`NAS_MAX_WORKERS`); model fits on the operator's one fit pool
  (`NAS_FIT_WORKERS`, default the container's CPUs), shared fairly across namespaces; Ax restores on
  `NAS_RESTORE_CONCURRENCY` at a time. The event loop never waits on any of them, and neither does /healthz.
- With `NAS_LEADER_ELECTION=true` a replica first waits for the Lease (cluster/leader.py) in the startup handler,
  so a standby watches nothing and acts on nothing until the active one is gone; a replica that loses the Lease
  exits at once. Anything a deposed replica still does in between is fenced by the state store's optimistic
  concurrency: its save fails against the new leader's resourceVersion before it can launch a candidate the store
  has not recorded.
- Every API request of ours is rate-limited on the client side (`NAS_API_QPS`, `NAS_API_BURST`), has a timeout
  (`NAS_API_TIMEOUT`), and is counted per experiment in Prometheus (`nas_api_requests_total`).

Kopf's bookkeeping lives under our own annotation prefix and finalizer. Prometheus metrics and /healthz are
served on NAS_METRICS_PORT (default 8080).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from nas_operator.cluster.api_requests import RateLimiter, attributed_to, instrument
from nas_operator.cluster.controller import ExperimentController, StepTiming
from nas_operator.cluster.leader import LeaderElector, LeaseConfig
from nas_operator.cluster.operator_metrics import live_metrics
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.cluster.trial_watch import TrialObjects
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL
from nas_operator.search.fit_pool import FitPool, default_fit_slots

log = logging.getLogger(__name__)
RESOURCE = (API_GROUP, API_VERSION, PLURAL)
MAX_WORKERS = int(os.environ.get("NAS_MAX_WORKERS", "8"))
API_TIMEOUT = float(os.environ.get("NAS_API_TIMEOUT", "30"))


def _restore_concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"NAS_RESTORE_CONCURRENCY must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"NAS_RESTORE_CONCURRENCY must be a whole number >= 1, got {text!r}")
    return value


RESTORE_CONCURRENCY = _restore_concurrency(os.environ.get("NAS_RESTORE_CONCURRENCY", "2").strip() or "2")
# A finalizer that cannot reach the state store gives up after this many tries (a Warning Event says so).
DELETE_RETRIES = int(os.environ.get("NAS_DELETE_RETRIES", "5"))
# /healthz fails when the event loop has not ticked for this long (a blocked loop stalls every experiment).
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 30.0
POLICY = TrialPolicy.from_env()
TIMING = StepTiming.from_env()
STEPS = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="nas-step")
TELEMETRY = Telemetry()
FIT_POOL = FitPool(
    default_fit_slots(),
    on_granted=lambda namespace, _, waited: TELEMETRY.fit_wait.labels(namespace=namespace).observe(waited),
)
RESTORES = threading.BoundedSemaphore(RESTORE_CONCURRENCY)


class _Operator:
    """What the handlers share: the controllers, their wake-up events, the watch cache, the event loop."""

    def __init__(self) -> None:
        self.controllers: dict[tuple[str, str], ExperimentController] = {}
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.objects: TrialObjects | None = None
        self.elector: LeaderElector | None = None
        self.heartbeat = time.monotonic()
        self.api_client: Any = None

    def wake(self, namespace: str, name: str) -> None:
        """Wake an experiment's daemon; safe from any thread (watch threads, engine threads)."""
        loop, event = self.loop, self.wakers.get((namespace, name))
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            return False, f"the event loop has not run for {age:.0f}s"
        if self.elector is not None and not self.elector.healthy():
            return False, f"leader election has stopped trying ({self.elector.last_error})"
        if self.elector is not None and not self.elector.is_leader:
            return True, f"standby; the Lease is held by {self.elector.holder or 'nobody yet'}"
        return True, "ok"


OPERATOR = _Operator()


def _api_client() -> Any:
    """One client for every request of ours: rate-limited, with each request counted for the experiment making it."""
    if OPERATOR.api_client is None:
        OPERATOR.api_client = instrument(_new_client(), RateLimiter.from_env(), TELEMETRY.count_request)
    return OPERATOR.api_client


def _new_client() -> Any:
    from kubernetes import client, config

    loader: Any = config  # untyped in the client's stubs
    try:
        loader.load_incluster_config()
    except config.ConfigException:
        loader.load_kube_config()
    api_client = client.ApiClient()
    # The client's connection pool must hold the step threads and the watch threads at once.
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = MAX_WORKERS + 8
    return api_client


def _controller(namespace: str, name: str, uid: str) -> ExperimentController:
    return ExperimentController(
        _api_client(),
        namespace,
        name,
        uid,
        TELEMETRY,
        POLICY,
        API_TIMEOUT,
        objects=OPERATOR.objects,
        fit_slot=lambda closed: FIT_POOL.slot(namespace, name, abort=closed),
        restore_slot=lambda: RESTORES,
        wake=lambda: OPERATOR.wake(namespace, name),
        timing=TIMING,
    )


def _in_step_thread(function: Any, *args: Any) -> asyncio.Future[Any]:
    return asyncio.get_running_loop().run_in_executor(STEPS, function, *args)


async def _finish(future: asyncio.Future[Any]) -> Any:
    """Await a step thread's result; if the daemon is cancelled meanwhile, still wait for the thread to end.

    A cancelled await does not stop a thread: without this, the finalizer could remove the state while the last
    step still writes it.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _stepped(namespace: str, name: str, step: Any, *args: Any) -> Any:
    with attributed_to(namespace, name):
        return step(*args)


def _patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    objects: Any = client.CustomObjectsApi(_api_client())
    try:
        with attributed_to(namespace, name):
            objects.patch_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=API_TIMEOUT,
            )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


class _QuietObserver(logging.Filter):
    """Drop Kopf's "Handler 'observe' succeeded." line: it would be logged for every watch event of every experiment."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Handler 'observe'")


async def _heartbeat() -> None:
    while True:
        OPERATOR.heartbeat = time.monotonic()
        await asyncio.sleep(HEARTBEAT_SECONDS)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Kopf's own calls (finalizers, event posting) get the same bound as ours; watches have theirs below.
    settings.networking.request_timeout = API_TIMEOUT
    settings.networking.connect_timeout = min(10.0, API_TIMEOUT)
    settings.watching.server_timeout = 60  # a stalled watch is dropped and re-established
    settings.watching.client_timeout = 90
    # A deleted experiment's daemon may be mid-step; it is given this long to end before its finalizer runs.
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = MAX_WORKERS
    logging.getLogger("kopf.objects").addFilter(_QuietObserver())
    OPERATOR.loop = asyncio.get_running_loop()
    OPERATOR.heartbeat = time.monotonic()
    asyncio.get_running_loop().create_task(_heartbeat())
    TELEMETRY.live.add(live_metrics(FIT_POOL, TELEMETRY.requests, OPERATOR.controllers, lambda: OPERATOR.objects))
    port = int(os.environ.get("NAS_METRICS_PORT", "8080"))
    if port:  # 0 turns the endpoint off
        TELEMETRY.serve(port, os.environ.get("NAS_METRICS_ADDRESS", "0.0.0.0"), OPERATOR.health)
    lease = LeaseConfig.from_env()
    if lease is not None:
        # Its own client, counted but never rate-limited: a renewal must not queue behind a burst of steps (a
        # leader that misses its renew deadline exits), as controller-runtime gives leader election its own client.
        elector_client = instrument(_new_client(), RateLimiter(0, 1), TELEMETRY.count_request)
        OPERATOR.elector = elector = LeaderElector(elector_client, lease, on_lost=_lost_leadership)
        log.info("waiting for the Lease %s/%s as %s", lease.namespace, lease.name, lease.identity)
        stop = threading.Event()
        try:
            if not await asyncio.to_thread(elector.wait_until_leader, stop):
                return
        except asyncio.CancelledError:  # shut down while standing by: let the waiting thread end too
            stop.set()
            raise
        elector.start_renewing()
        log.info("this replica leads (Lease %s/%s)", lease.namespace, lease.name)
    TELEMETRY.leader.set(1)
    namespaces = [n.strip() for n in os.environ.get("NAS_WATCH_NAMESPACES", "").split(",") if n.strip()]
    OPERATOR.objects = TrialObjects(_api_client(), namespaces or None, OPERATOR.wake, request_timeout=API_TIMEOUT)
    OPERATOR.objects.start()


def _lost_leadership() -> None:
    """Exit at once: a replica that is no longer the leader must not take one more step (the pod restarts it as a
    standby). os._exit, not sys.exit: this runs on the renew thread, and nothing may be saved on the way out."""
    log.critical("lost the Lease: exiting so that the new leader alone acts")
    logging.shutdown()
    os._exit(70)


@kopf.on.cleanup()
async def release(**_: Any) -> None:
    """A clean shutdown (a rolling update) hands the Lease over at once instead of a lease duration later."""
    if OPERATOR.objects is not None:
        OPERATOR.objects.stop()
    if OPERATOR.elector is not None:
        await asyncio.to_thread(OPERATOR.elector.release)


@kopf.on.event(*RESOURCE)
async def observe(namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> None:
    """A new spec (its generation) wakes the experiment's daemon; our own status patches do not."""
    controller = OPERATOR.controllers.get((namespace or "", name))
    if controller is None:
        return
    previous = controller.previous
    if previous is None or previous.observed_generation != meta.get("generation"):
        OPERATOR.wake(namespace or "", name)


@kopf.daemon(*RESOURCE, cancellation_timeout=API_TIMEOUT * 2)
async def reconcile(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    uid: str,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Step the experiment whenever woken or due, until it is deleted. `spec` and `meta` are live views."""
    assert namespace is not None  # the resource is namespaced
    key = (namespace, name)
    controller = OPERATOR.controllers.get(key)
    if controller is None or controller.uid != uid:
        if controller is not None:
            controller.close()
        controller = OPERATOR.controllers[key] = _controller(namespace, name, uid)
    wake = OPERATOR.wakers[key] = asyncio.Event()
    reported: dict[str, Any] = dict(status)
    woken = True
    try:
        while not stopped:
            wake.clear()  # before the step: whatever happens during it wakes the next one
            new_status = await _finish(
                _in_step_thread(
                    _stepped, namespace, name, controller.step, dict(spec), meta.get("generation"), reported, woken
                )
            )
            if {k: reported.get(k) for k in new_status} != new_status:
                try:
                    await _finish(_in_step_thread(_patch_status, namespace, name, new_status))
                    reported = {**reported, **new_status}
                except Exception as exc:  # sent again after the next step; the daemon carries on meanwhile
                    log.warning("%s/%s: status not written: %s", namespace, name, exc)
            woken = await _wait(wake, controller.wait_seconds())
    finally:
        if OPERATOR.wakers.get(key) is wake:
            del OPERATOR.wakers[key]


async def _wait(wake: asyncio.Event, seconds: float | None) -> bool:
    """True when woken by an event, False when the timer expired."""
    try:
        await asyncio.wait_for(wake.wait(), seconds)
    except TimeoutError:
        return False
    return True


@kopf.on.delete(*RESOURCE)
async def delete(spec: kopf.Spec, namespace: str | None, name: str, uid: str, retry: int, **_: Any) -> None:
    """Trials go with their owner (Jobs carry owner references); the state is removed here.

    A store that cannot be reached (its Secret deleted first, a database gone) is retried a few times, then left
    behind with a Warning Event: deleting an experiment never hangs.
    """
    assert namespace is not None
    controller = OPERATOR.controllers.get((namespace, name))
    if controller is None or controller.uid != uid:
        controller = _controller(namespace, name, uid)
    try:
        await _in_step_thread(_stepped, namespace, name, controller.delete_state, dict(spec))
    except Exception as exc:
        if retry + 1 < DELETE_RETRIES:
            raise kopf.TemporaryError(f"state not removed yet: {exc}", delay=min(30, 2 ** (retry + 1))) from exc
        message = f"gave up removing the stored state after {retry + 1} tries: {exc}"
        await _in_step_thread(controller.warn, "StateNotRemoved", message)
        log.warning("%s/%s: %s", namespace, name, message)
    OPERATOR.controllers.pop((namespace, name), None)
