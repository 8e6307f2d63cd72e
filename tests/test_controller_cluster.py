"""ExperimentController on the real control plane, without Kopf: what a finished experiment costs, and the fence.

The fence: two controllers of one experiment (a deposed leader that has not noticed yet, and the new one) never
both launch. Every launch is saved in the state before the Job is created, and a save carries the resourceVersion
the saver read; so the stale one's save is refused (StoreConflict) and it creates nothing the store has not got.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from nas_operator.cluster.api_requests import RateLimiter, RequestCounter, instrument
from nas_operator.cluster.controller import ExperimentController
from nas_operator.resource.policy import TrialPolicy
from tests.k8s.cluster import ControlPlane

from .scale_specs import quick_experiment
from .test_operator import CRD

pytestmark = pytest.mark.cluster
POLICY = TrialPolicy()  # the default pending timeout: a loaded machine must not fail a trial that only waits


def _create(cluster: ControlPlane, namespace: str, document: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("nasexperiments.nas.operator.dev")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))
    obj = json.loads(cluster.kubectl("get", "nasx", document["metadata"]["name"], "-n", namespace, "-o", "json").stdout)
    return obj["spec"], obj["metadata"]["uid"], int(obj["metadata"]["generation"])


def _controller(
    cluster: ControlPlane, namespace: str, name: str, uid: str, tmp_path: Path
) -> tuple[Any, RequestCounter]:
    counter = RequestCounter()
    api = instrument(
        config.new_client_from_config(config_file=str(cluster.kubeconfig)), RateLimiter(0, 1), counter.record
    )
    controller = ExperimentController(api, namespace, name, uid, policy=POLICY)
    controller.metrics_root = tmp_path
    return controller, counter


def _steps_until(
    controller: ExperimentController, spec: dict[str, Any], generation: int, done: Any, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = controller.step(spec, generation)
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def _jobs(cluster: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    return {item["metadata"]["name"]: item for item in items}


def test_a_finished_experiment_is_never_decoded_again_and_costs_no_request(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    spec, uid, generation = _create(
        cluster, namespace, quick_experiment("done", max_trials=2, parallelism=2, initial_trials=2, seconds=0.2)
    )
    controller, counter = _controller(cluster, namespace, "done", uid, tmp_path)
    status = _steps_until(controller, spec, generation, lambda s: s.get("phase") == "Succeeded", 120)
    assert controller.loop is None and controller.worker is None  # the engine and its thread are gone
    assert controller.wait_seconds() is None  # nothing to wait for but a new spec
    before = sum(counter.totals().values())
    for _ in range(3):
        assert controller.step(spec, generation, woken=False) == status
        assert controller.step(spec, generation, woken=True) == status  # an event about its Jobs (their deletion)
    assert sum(counter.totals().values()) == before
    # After a restart: the object's status says it finished, so its store is not even read.
    restarted, restarted_counter = _controller(cluster, namespace, "done", uid, tmp_path)
    assert restarted.step(spec, generation, stored_status=status) == status
    assert sum(restarted_counter.totals().values()) == 0
    assert restarted.loop is None
    # A new spec (a larger budget) loads it again and the search goes on.
    spec["budget"]["maxTrials"] = 3
    reopened = _steps_until(restarted, spec, generation + 1, lambda s: s.get("trials", {}).get("total") == 3, 120)
    assert reopened["phase"] in ("Running", "Succeeded")


def test_a_deposed_controller_cannot_launch_what_the_store_does_not_hold(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    document = quick_experiment("fenced", max_trials=6, parallelism=2, initial_trials=6, seconds=1)
    spec, uid, generation = _create(cluster, namespace, document)
    old, _ = _controller(cluster, namespace, "fenced", uid, tmp_path)
    _steps_until(old, spec, generation, lambda s: s.get("trials", {}).get("running") == 2, 60)
    # The new leader takes over from the store, and carries on while the old one is paused (it has not seen its
    # Lease go): trials finish, the new one saves their results and launches the next ones.
    new, _ = _controller(cluster, namespace, "fenced", uid, tmp_path)
    _steps_until(
        new, spec, generation, lambda s: s.get("trials", {}).get("succeeded", 0) >= 2 and s["trials"]["total"] >= 4, 90
    )
    launched_by_new = set(_jobs(cluster, namespace))
    # The old one wakes up with its stale table: the first two trials ended, so it wants to launch two more. Its
    # save is refused before it creates anything, and it drops what it held.
    status = old.step(spec, generation)
    assert any(c["type"] == "StateSaved" and c["reason"] == "StoreConflict" for c in status.get("conditions", [])), (
        status
    )
    assert old.loop is None
    assert set(_jobs(cluster, namespace)) == launched_by_new
    # Had it launched, its Job would carry another trial's name with other parameters, or a fifth name the new one
    # never saved. Run to the end under the new one: each trial index launched once, with the stored parameters.
    final = _steps_until(new, spec, generation, lambda s: s.get("phase") == "Succeeded", 180)
    assert final["trials"]["succeeded"] == 6
    jobs = _jobs(cluster, namespace)
    assert sorted(jobs) == sorted(f"fenced-t{i}" for i in range(6))
