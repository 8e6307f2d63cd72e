"""`nasctl dashboard --kube` on the real control plane, as a user whose kubeconfig may read one namespace only.

The experiment is a real NASExperiment object (through the CRD's schema) and its state the ConfigMap the
operator writes (ConfigMapStore, fed by the real loop); the user is a ServiceAccount token bound to a Role
that may only get/list nasexperiments and configmaps in that namespace. A second namespace's experiment must
not show, and asking for it gives the API server's refusal, not a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config

from nas_operator.search.pareto import pareto_indices
from nas_operator.storage.store import ConfigMapStore, FileStore
from tests.k8s.cluster import ControlPlane

from .browser import assert_front_and_table, chromium, console_errors, wait_js
from .conftest import ROOT
from .test_dashboard import Dashboard, run_experiment, toy_experiment

pytestmark = pytest.mark.cluster
CRD = ROOT / "crds" / "nas.operator.dev_nasexperiments.yaml"

VIEWER_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: nas-viewer, namespace: {ns}}}
rules:
- apiGroups: [nas.operator.dev]
  resources: [nasexperiments]
  verbs: [get, list]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: nas-viewer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: nas-viewer}}
subjects:
- {{kind: ServiceAccount, name: viewer, namespace: {ns}}}
"""


def _create_experiment(cluster: ControlPlane, namespace: str, name: str, tmp_path: Path) -> list[int]:
    """The NASExperiment object and the state ConfigMap the operator would have written; returns the front."""
    experiment = toy_experiment(name, algorithm="sobol", max_trials=8)
    body = experiment.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["namespace"] = namespace
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "nas.operator.dev", "v1alpha1", namespace, "nasexperiments", body
    )
    state = run_experiment(experiment, tmp_path / name)
    state.uid = created["metadata"]["uid"]
    saved = FileStore(tmp_path / name).load()
    assert saved is not None
    ConfigMapStore(client.CoreV1Api(api), namespace, name).save(state, saved.engine)
    return pareto_indices(experiment.spec, state.results())


def test_the_page_shows_what_a_one_namespace_kubeconfig_may_read(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("nasexperiments.nas.operator.dev")
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    try:
        front = _create_experiment(cluster, namespace, "mine", tmp_path)
        _create_experiment(cluster, other, "theirs", tmp_path)
        cluster.kubectl("create", "serviceaccount", "viewer", "-n", namespace)
        cluster.kubectl("apply", "-f", "-", input=VIEWER_ROLE.format(ns=namespace))
        kubeconfig = cluster.kubeconfig_for_token(cluster.token_for(namespace, "viewer"), tmp_path / "viewer.yaml")
        denied = cluster.kubectl("get", "nasx", "-n", other, kubeconfig=kubeconfig, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

        server = Dashboard("--kube", "-n", namespace, "-n", other, env={"KUBECONFIG": str(kubeconfig)})
        try:
            listing = server.json("/api/experiments")
            assert [e["name"] for e in listing["experiments"]] == ["mine"]
            assert len(listing["errors"]) == 1 and "403" in listing["errors"][0]  # the other namespace, refused
            with chromium() as driver:
                driver.get(server.url)
                key = f"kube~{namespace}~mine"
                wait_js(driver, f"document.querySelector('#experiments tr[data-key=\"{key}\"]')")
                row = driver.find_element(By.CSS_SELECTOR, f'#experiments tr[data-key="{key}"]')
                assert "Succeeded" in row.text and "theirs" not in driver.page_source
                row.click()
                points = assert_front_and_table(driver, front, 8)
                ActionChains(driver).move_to_element(points[-1]).click().perform()
                shown = int(wait_js(driver, "document.getElementById('trial-detail').dataset.index"))
                assert shown in front
                assert driver.find_element(By.ID, "trial-title").text.startswith(f"mine-t{shown} ")
                wait_js(driver, "document.getElementById('curves').textContent.includes(\"cluster's volume\")")
                assert console_errors(driver) == []
        finally:
            server.stop()
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
