"""Every Kopf decorator of the operator, and nothing else.

Run with `kopf run -m nas_operator.cluster.handlers` (the operator image does). A timer per
NASExperiment runs one reconcile step every few seconds on a bounded pool of step threads
(`NAS_MAX_WORKERS`, the chart's `operator.maxWorkers`), so one slow experiment (a model fit, a
large state) never stalls the event loop. A step of one experiment never overlaps the next step
of the same experiment (Kopf waits for a timer's handler), and every API call has a timeout
(`NAS_API_TIMEOUT`), so an experiment whose calls hang holds at most one step thread for a
bounded time while the others go on. What trials may do is the platform's trial policy
(`NAS_TRIAL_*`, the chart's `trialPolicy`), read once at start.
Kopf's bookkeeping lives under our own annotation prefix and finalizer. Prometheus metrics
are served on NAS_METRICS_PORT (default 8080); Kopf's liveness probe is `--liveness`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from nas_operator.cluster.controller import ExperimentController
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
STEP_SECONDS = float(os.environ.get("NAS_STEP_SECONDS", "2"))
MAX_WORKERS = int(os.environ.get("NAS_MAX_WORKERS", "8"))
API_TIMEOUT = float(os.environ.get("NAS_API_TIMEOUT", "30"))
# A finalizer that cannot reach the state store gives up after this many tries (a Warning Event says so).
DELETE_RETRIES = int(os.environ.get("NAS_DELETE_RETRIES", "5"))
POLICY = TrialPolicy.from_env()
STEPS = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="nas-step")
CONTROLLERS: dict[tuple[str, str], ExperimentController] = {}
TELEMETRY = Telemetry()


def _controller(namespace: str, name: str, uid: str) -> ExperimentController:
    return ExperimentController(_api_client(), namespace, name, uid, TELEMETRY, POLICY, API_TIMEOUT)


async def _in_step_thread(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(STEPS, function, *args)


def _api_client() -> Any:
    from kubernetes import client, config

    loader: Any = config  # untyped in the client's stubs
    try:
        loader.load_incluster_config()
    except config.ConfigException:
        loader.load_kube_config()
    return client.ApiClient()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Kopf's own calls (status patches, finalizers) get the same bound as ours; watches have theirs below.
    settings.networking.request_timeout = API_TIMEOUT
    settings.networking.connect_timeout = min(10.0, API_TIMEOUT)
    settings.watching.server_timeout = 60  # a stalled watch is dropped and re-established
    settings.watching.client_timeout = 90
    # A deleted experiment's timer may be mid-step; Kopf releases the finalizer only once it has
    # stopped, checking every `cancellation_polling` seconds (60 by default: deletion took a minute).
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = MAX_WORKERS
    port = int(os.environ.get("NAS_METRICS_PORT", "8080"))
    if port:  # 0 turns the endpoint off
        TELEMETRY.serve(port, os.environ.get("NAS_METRICS_ADDRESS", "0.0.0.0"))


@kopf.timer(*RESOURCE, interval=STEP_SECONDS, sharp=False)
async def reconcile(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    uid: str,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    assert namespace is not None  # the resource is namespaced
    key = (namespace, name)
    controller = CONTROLLERS.get(key)
    if controller is None or controller.uid != uid:
        if controller is not None:
            controller.close()
        controller = CONTROLLERS[key] = _controller(namespace, name, uid)
    new_status = await _in_step_thread(controller.step, dict(spec), meta.get("generation"))
    if {k: status.get(k) for k in new_status} != new_status:
        patch.status.update(new_status)


@kopf.on.delete(*RESOURCE)
async def delete(spec: kopf.Spec, namespace: str | None, name: str, uid: str, retry: int, **_: Any) -> None:
    """Trials go with their owner (Jobs carry owner references); the state is removed here.

    A store that cannot be reached (its Secret deleted first, a database gone) is retried a few times, then left
    behind with a Warning Event: deleting an experiment never hangs.
    """
    assert namespace is not None
    controller = CONTROLLERS.get((namespace, name))
    if controller is None or controller.uid != uid:
        controller = _controller(namespace, name, uid)
    try:
        await _in_step_thread(controller.delete_state, dict(spec))
    except Exception as exc:
        if retry + 1 < DELETE_RETRIES:
            raise kopf.TemporaryError(f"state not removed yet: {exc}", delay=min(30, 2 ** (retry + 1))) from exc
        message = f"gave up removing the stored state after {retry + 1} tries: {exc}"
        await _in_step_thread(controller.warn, "StateNotRemoved", message)
        logging.getLogger(__name__).warning("%s/%s: %s", namespace, name, message)
    CONTROLLERS.pop((namespace, name), None)
