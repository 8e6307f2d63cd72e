"""The ConfigMap state store on the real API server: round trip, size limit, ownership, conflicts."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from kubernetes import client, config

from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.storage.store import ConfigMapStore, ForeignState, StateTooLarge, StoreConflict
from tests.k8s.cluster import ControlPlane

pytestmark = pytest.mark.cluster


@pytest.fixture
def core(cluster: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def _state(trials: int) -> LoopState:
    state = LoopState("exp", "fingerprint")
    for i in range(trials):
        state.trials[i] = TrialRecord(i, f"exp-t{i}", {"x": i / 10}, "Sobol", status="succeeded", metrics={"f": 1.0})
    return state


def test_round_trip_and_a_second_writer_gets_a_conflict(core: client.CoreV1Api, namespace: str) -> None:
    store = ConfigMapStore(core, namespace, "exp")
    assert store.load() is None
    store.save(_state(3), {"format": "x", "payload": [1, 2, 3]})
    store.save(_state(4), {"format": "x", "payload": [1, 2, 3, 4]})
    loaded = ConfigMapStore(core, namespace, "exp").load()
    assert loaded is not None and sorted(loaded.state.trials) == [0, 1, 2, 3]
    assert loaded.engine == {"format": "x", "payload": [1, 2, 3, 4]}
    labels = core.read_namespaced_config_map("exp-nas-state", namespace).metadata.labels
    assert labels["nas.operator.dev/experiment"] == "exp"

    stale = ConfigMapStore(core, namespace, "exp")
    stale.load()
    store.save(_state(5), {})
    with pytest.raises(StoreConflict, match="changed since it was read"):
        stale.save(_state(5), {})  # written with an old resourceVersion: refused, nothing overwritten
    blind = ConfigMapStore(core, namespace, "exp")
    with pytest.raises(StoreConflict, match="created by someone else"):
        blind.save(_state(1), {})  # never read, so it must not replace what is there


def test_a_state_of_another_experiment_object_is_refused_untouched(core: client.CoreV1Api, namespace: str) -> None:
    old = {"apiVersion": "nas.operator.dev/v1alpha1", "kind": "NASExperiment", "name": "exp", "uid": "old-uid"}
    state = _state(2)
    state.uid = "old-uid"
    ConfigMapStore(core, namespace, "exp", owner_reference=old).save(state, {})
    new = {**old, "uid": "new-uid"}
    with pytest.raises(ForeignState, match="owned by an earlier experiment of this name"):
        ConfigMapStore(core, namespace, "exp", owner_reference=new).load()
    # The same state with its owner reference stripped (copied by hand, say) is still refused by the uid inside it.
    core.patch_namespaced_config_map("exp-nas-state", namespace, {"metadata": {"ownerReferences": None}})
    with pytest.raises(ForeignState, match="uid old-uid, this one is new-uid"):
        ConfigMapStore(core, namespace, "exp", owner_reference=new).load()
    loaded = ConfigMapStore(core, namespace, "exp", owner_reference=old).load()
    assert loaded is not None and sorted(loaded.state.trials) == [0, 1]


def test_state_over_the_limit_is_refused_before_the_api_server_would(core: client.CoreV1Api, namespace: str) -> None:
    store = ConfigMapStore(core, namespace, "big")
    incompressible: dict[str, Any] = {"noise": os.urandom(900 * 1024).hex()}
    with pytest.raises(StateTooLarge, match=r"over the \d+ KiB a ConfigMap can hold .* use spec.storage.type: sql"):
        store.save(_state(1), incompressible)
    assert store.load() is None  # nothing half-written
    json.dumps(incompressible)  # the document itself was fine; only its size is refused


def test_the_state_goes_with_its_owner(core: client.CoreV1Api, namespace: str) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    store = ConfigMapStore(core, namespace, "owned", owner_reference=reference)
    store.save(_state(1), {})
    core.delete_namespaced_config_map("owner", namespace)
    deadline = time.monotonic() + 60
    while store.load() is not None:  # the garbage collector removes it
        assert time.monotonic() < deadline
        time.sleep(0.25)
