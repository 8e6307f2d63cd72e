"""Every Kopf decorator of the operator, and nothing else.

Run with `kopf run -m nas_operator.cluster.handlers` (the operator image does). A timer per
NASExperiment runs one reconcile step every few seconds in a worker thread, so one slow
experiment (a model fit, a large state) never stalls the event loop or the others.
Kopf's bookkeeping lives under our own annotation prefix and finalizer. Prometheus metrics
are served on NAS_METRICS_PORT (default 8080); Kopf's liveness probe is `--liveness`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from nas_operator.cluster.controller import ExperimentController
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
STEP_SECONDS = float(os.environ.get("NAS_STEP_SECONDS", "2"))
CONTROLLERS: dict[tuple[str, str], ExperimentController] = {}
TELEMETRY = Telemetry()


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
    settings.watching.server_timeout = 60  # a stalled watch is dropped and re-established
    settings.watching.client_timeout = 90
    # A deleted experiment's timer may be mid-step; Kopf releases the finalizer only once it has
    # stopped, checking every `cancellation_polling` seconds (60 by default: deletion took a minute).
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = int(os.environ.get("NAS_MAX_WORKERS", "8"))
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
        controller = CONTROLLERS[key] = ExperimentController(_api_client(), namespace, name, uid, TELEMETRY)
    new_status = await asyncio.to_thread(controller.step, dict(spec), meta.get("generation"))
    if {k: status.get(k) for k in new_status} != new_status:
        patch.status.update(new_status)


@kopf.on.delete(*RESOURCE)
async def delete(spec: kopf.Spec, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Trials go with their owner (Jobs carry owner references); the state is removed here."""
    assert namespace is not None
    controller = CONTROLLERS.pop((namespace, name), None) or ExperimentController(
        _api_client(), namespace, name, uid, TELEMETRY
    )
    await asyncio.to_thread(controller.delete_state, dict(spec))
