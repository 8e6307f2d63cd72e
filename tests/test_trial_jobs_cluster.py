"""Trial Jobs on the real control plane: Pod Security `restricted` admission, the per-pod log layout on one
volume shared by two namespaces, eviction under podFailurePolicy, stuck pods, and adoption rules.

The API server's own Pod Security admission and the real Job controller and scheduler decide here; the
node agent stands in for the kubelet (see tests/k8s/node_agent.py for what it fakes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from nas_operator.backends.kubernetes import KubernetesBackend
from nas_operator.cli import main as nasctl
from nas_operator.cluster.controller import owner_reference
from nas_operator.core.backend import LaunchError, TrialLaunch, render_launch
from nas_operator.core.metrics import read_trial_metrics
from nas_operator.core.state import TrialRecord
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from tests.k8s.cluster import ControlPlane

from .conftest import EXAMPLES, ROOT, load_yaml
from .test_cluster import _pv_and_claim
from .test_kubernetes_backend import wait_for_trial

pytestmark = pytest.mark.cluster
CRD = ROOT / "crds" / "nas.operator.dev_nasexperiments.yaml"
FAST = TrialPolicy(pending_timeout_seconds=5)
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
METRICS_SCRIPT = (
    "import json, os, time; time.sleep(float(os.environ.get('SLEEP', '0'))); "
    "open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w')"
    ".write(json.dumps(dict(val_acc=0.9, num_params=10, latency_p99_ms=1.0)))"
)


def _api(cluster: ControlPlane) -> Any:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def _crd(cluster: ControlPlane) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("nasexperiments.nas.operator.dev")


def _experiment(cluster: ControlPlane, namespace: str, document: dict[str, Any]) -> str:
    """Create the NASExperiment (no operator watches this namespace: it only owns the Jobs); its uid."""
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))
    name = document["metadata"]["name"]
    return cluster.kubectl("get", "nasx", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout.strip()


def _spec(document: dict[str, Any], **trial: Any) -> NASExperimentSpec:
    document["spec"]["trial"].update(trial)
    return load_experiment(document).spec


def _doc(name: str = "digits-mlp") -> dict[str, Any]:
    document = load_yaml(EXAMPLES / "digits-mlp.yaml")
    document["metadata"]["name"] = name
    return document


def _termination_doc(**trial: Any) -> dict[str, Any]:
    document = _doc()
    document["spec"]["metrics"] = {"source": "terminationMessage"}
    document["spec"]["trial"].update(command=["python", "-c"], args=[METRICS_SCRIPT], **trial)
    return document


def _trial(index: int, **parameters: Any) -> TrialRecord:
    values = {"hidden_size_1": 16, "hidden_size_2": 8, "learning_rate": 0.01, "epochs": 1, "dropout": 0.1}
    trial = TrialRecord(index, f"digits-mlp-t{index}", {**values, "batch_size": 64, **parameters}, "Sobol")
    trial.status = "running"
    return trial


def _launch(backend: KubernetesBackend, trial: TrialRecord, experiment: str = "digits-mlp") -> TrialLaunch:
    log_dir, trial_dir = backend.trial_paths(experiment, trial.name)
    return render_launch(experiment, trial, backend.spec.trial, log_dir, trial_dir, None)


def _start(backend: KubernetesBackend, trial: TrialRecord) -> TrialRecord:
    trial.handle = backend.launch(_launch(backend, trial))
    trial.started_at = time.time()
    return trial


def _restricted(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, RESTRICTED, "--overwrite")


def _job_gone(cluster: ControlPlane, namespace: str, name: str) -> bool:
    result = cluster.kubectl("get", "job", name, "-n", namespace, "-o", "name", check=False)
    return result.returncode != 0 and "NotFound" in result.stderr


# ------------------------------------------------------------------------------------ Pod Security restricted


def test_every_example_renders_to_a_job_that_runs_in_a_restricted_namespace(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _crd(cluster)
    _restricted(cluster, namespace)
    # Admission is really on: the negative control, a privileged pod, is refused in this namespace.
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    refused = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(privileged), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert len(examples) >= 2
    claims = {load_yaml(path)["spec"]["metrics"].get("claimName") for path in examples} - {None}
    for claim in sorted(claims):
        _pv_and_claim(cluster, namespace, tmp_path, claim)
    for path in examples:
        document = load_yaml(path)
        name = document["metadata"]["name"]
        uid = _experiment(cluster, namespace, document)
        rendered = CliRunner().invoke(
            nasctl,
            ["render", str(path), "--trial", "0", "-n", namespace, "--uid", uid, "--set", "epochs=1"],
            catch_exceptions=False,
        )
        assert rendered.exit_code == 0, rendered.output
        job = yaml.safe_load(rendered.output)
        assert job["metadata"]["ownerReferences"][0]["uid"] == uid
        cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(job))
        waited = cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Complete", f"job/{name}-t0", "--timeout=150s", check=False
        )
        assert waited.returncode == 0, (path.name, waited.stderr, cluster.logs("node-agent"))
        pods = json.loads(
            cluster.kubectl("get", "pods", "-n", namespace, "-l", f"job-name={name}-t0", "-o", "json").stdout
        )
        (pod,) = pods["items"]
        pod_dir = tmp_path / namespace / f"{name}-{uid[:8]}" / f"{name}-t0" / pod["metadata"]["name"]
        assert any(p.name.startswith("events.out.tfevents") for p in pod_dir.rglob("*")), list(tmp_path.rglob("*"))


def test_a_pod_refused_by_admission_fails_the_trial_with_the_admission_message(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _restricted(cluster, namespace)
    backend = KubernetesBackend(
        _api(cluster),
        namespace,
        _spec(_termination_doc()),
        metrics_root=tmp_path,
        policy=TrialPolicy(run_as_non_root=False, pending_timeout_seconds=5),
    )
    trial = _start(backend, _trial(0))
    observation = wait_for_trial(backend, trial, cluster, timeout=60)
    assert observation.status == "failed"
    assert "FailedCreate" in observation.message and 'violates PodSecurity "restricted:latest"' in observation.message
    assert "runAsNonRoot" in observation.message
    deadline = time.monotonic() + 30
    while not _job_gone(cluster, namespace, trial.name):
        assert time.monotonic() < deadline, "the stuck trial's Job was not deleted"
        time.sleep(0.3)


# ------------------------------------------------------------------------------------ tenant layout


def test_two_namespaces_on_one_volume_each_read_only_their_own_trials(cluster: ControlPlane, tmp_path: Path) -> None:
    _crd(cluster)
    shared = tmp_path / "export"  # one "NFS export" behind a PersistentVolume in each namespace
    shared.mkdir()
    namespaces = [f"t-{int(time.time() * 1000) % 10**8:08d}-{team}" for team in ("a", "b")]
    backends, trials = [], []
    try:
        for hidden, namespace in zip((8, 40), namespaces, strict=True):
            cluster.kubectl("create", "namespace", namespace)
            _pv_and_claim(cluster, namespace, shared, "nas-logs")
            document = _doc()  # the same experiment name in both namespaces
            document["spec"]["trial"]["args"].append("--latency-repeats=20")
            uid = _experiment(cluster, namespace, document)
            spec = load_experiment(document).spec
            backend = KubernetesBackend(
                _api(cluster), namespace, spec, owner_reference("digits-mlp", uid), shared, experiment_uid=uid
            )
            backends.append(backend)
            trials.append(_start(backend, _trial(0, hidden_size_1=hidden)))
        observations = [wait_for_trial(b, t, cluster, timeout=180) for b, t in zip(backends, trials, strict=True)]
        for backend, observation in zip(backends, observations, strict=True):
            assert observation.status == "succeeded", observation.message
            assert observation.log_dir is not None
            assert observation.log_dir.parent == backend.log_dir("digits-mlp", "digits-mlp-t0")
        assert sorted(p.name for p in shared.iterdir()) == sorted(namespaces)  # nothing outside the namespaces
        metrics = [read_trial_metrics(b.spec, o.log_dir, None) for b, o in zip(backends, observations, strict=True)]
        params = [hidden * 64 + hidden + hidden * 8 + 8 + 8 * 10 + 10 for hidden in (8, 40)]
        assert [m["num_params"] for m in metrics] == params  # each read its own trial, not the other team's
        for backend, observation in zip(backends, observations, strict=True):
            trial_dir = observation.log_dir.parent
            assert [p.name for p in trial_dir.iterdir()] == [observation.log_dir.name]  # one pod, one directory
            assert trial_dir.parent.name.startswith("digits-mlp-") and trial_dir.parents[1].name == backend.namespace
    finally:
        for namespace in namespaces:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ------------------------------------------------------------------------------------ accounting


def test_an_evicted_trial_pod_is_replaced_and_the_trial_does_not_fail(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    spec = _spec(_termination_doc(env=[{"name": "SLEEP", "value": "6"}], retries=0))
    api = _api(cluster)
    backend = KubernetesBackend(api, namespace, spec, metrics_root=tmp_path)
    trial = _start(backend, _trial(0))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={trial.name}").items
        running = [p for p in pods if p.status.phase == "Running"]
        if running:
            break
        assert time.monotonic() < deadline, cluster.logs("node-agent")
        time.sleep(0.2)
    evicted = running[0].metadata.name
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=evicted, namespace=namespace))
    core.create_namespaced_pod_eviction(evicted, namespace, body)
    observation = wait_for_trial(backend, trial, cluster, timeout=120)
    assert observation.status == "succeeded", observation.message
    job = client.BatchV1Api(api).read_namespaced_job(trial.name, namespace)
    assert job.spec.backoff_limit == 0 and not job.status.failed
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={trial.name}").items
    succeeded = [p.metadata.name for p in pods if p.status.phase == "Succeeded"]
    assert len(succeeded) == 1 and succeeded[0] != evicted  # a replacement pod ran the trial


@pytest.mark.parametrize(
    ("trial_fields", "reason"),
    [
        ({"image": "registry.invalid/nas/trainer:0.1.0"}, "ImagePullBackOff"),
        ({"nodeSelector": {"nas-test/pool": "nowhere"}}, "Unschedulable"),
    ],
    ids=["image-pull", "unschedulable"],
)
def test_a_stuck_trial_fails_after_the_pending_timeout_with_the_pods_reason(
    cluster: ControlPlane, namespace: str, tmp_path: Path, trial_fields: dict[str, Any], reason: str
) -> None:
    backend = KubernetesBackend(
        _api(cluster), namespace, _spec(_termination_doc(**trial_fields)), metrics_root=tmp_path, policy=FAST
    )
    trial = _start(backend, _trial(0))
    observation = wait_for_trial(backend, trial, cluster, timeout=60)
    assert observation.status == "failed"
    assert f": {reason}:" in observation.message and "not started after 5s" in observation.message
    assert time.time() - (trial.started_at or 0) < 40  # bounded: the pending timeout, not a trial timeout
    deadline = time.monotonic() + 30
    while not _job_gone(cluster, namespace, trial.name):
        assert time.monotonic() < deadline, "the stuck trial's Job was not deleted"
        time.sleep(0.3)


def test_a_job_of_the_trials_name_owned_by_another_experiment_or_with_other_parameters_is_not_adopted(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _crd(cluster)
    never_runs = _termination_doc(image="registry.invalid/nas/trainer:0.1.0")
    spec = _spec(never_runs)
    uids = [_experiment(cluster, namespace, _doc(name)) for name in ("digits-mlp", "other")]
    api = _api(cluster)
    mine, theirs = (
        KubernetesBackend(api, namespace, spec, owner_reference(n, u), tmp_path, experiment_uid=u)
        for n, u in zip(("digits-mlp", "other"), uids, strict=True)
    )
    trial = _start(mine, _trial(0))
    assert mine.launch(_launch(mine, trial))["uid"] == trial.handle["uid"]  # the same trial again: adopted
    with pytest.raises(LaunchError, match="not owned by this experiment"):
        theirs.launch(_launch(theirs, _trial(0)))
    with pytest.raises(LaunchError, match="other parameters"):
        mine.launch(_launch(mine, _trial(0, epochs=30)))
    try:
        client.BatchV1Api(api).read_namespaced_job(trial.name, namespace)
    except ApiException as exc:  # pragma: no cover - a failure message, not a path
        raise AssertionError(f"the first Job must survive the refused launches: {exc}") from None
