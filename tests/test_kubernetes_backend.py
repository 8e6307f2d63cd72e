"""Trials as Jobs: the manifest built through TorchX under the trial policy, adoption, stuck pods (a fake API),
and real Jobs run by the test node agent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ReadTimeoutError

from nas_operator.backends.kubernetes import KubernetesBackend, build_job
from nas_operator.core.backend import LaunchError, Observation, TransientLaunchError, TrialLaunch, render_launch
from nas_operator.core.metrics import read_trial_metrics
from nas_operator.core.state import TrialRecord
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from tests.k8s.cluster import ControlPlane

from .conftest import EXAMPLES, load_yaml
from .test_cluster import _pv_and_claim

UID = "5f0c1d2e-aaaa-bbbb-cccc-0123456789ab"
OWNER = {
    "apiVersion": "nas.operator.dev/v1alpha1",
    "kind": "NASExperiment",
    "name": "digits-mlp",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}
LENIENT = TrialPolicy(service_accounts=("default", "trainer"), mount_types=("volume", "bind"))


def _spec(source: str = "tensorboard", **trial: Any) -> NASExperimentSpec:
    doc = load_yaml(EXAMPLES / "digits-mlp.yaml")
    doc["spec"]["metrics"].update(source=source, claimName="shared" if source == "tensorboard" else None)
    doc["spec"]["trial"].update(trial)
    doc["spec"]["trial"]["args"] = [*doc["spec"]["trial"]["args"], "--latency-repeats=20"]
    return load_experiment(doc).spec


def _trial(index: int = 0, epochs: int = 1) -> TrialRecord:
    parameters = {
        "hidden_size_1": 16,
        "hidden_size_2": 8,
        "learning_rate": 0.01,
        "epochs": epochs,
        "dropout": 0.1,
        "batch_size": 64,
    }
    return TrialRecord(index, f"digits-mlp-t{index}", parameters, "Sobol")


def _launch(backend: KubernetesBackend, spec: NASExperimentSpec, trial: TrialRecord) -> TrialLaunch:
    log_dir, trial_dir = backend.trial_paths("digits-mlp", trial.name)
    return render_launch("digits-mlp", trial, spec.trial, log_dir, trial_dir, None)


def _plain_launch(spec: NASExperimentSpec, index: int = 3, timeout: float | None = 600.0) -> TrialLaunch:
    return render_launch("digits-mlp", _trial(index), spec.trial, "/nas-logs", "/nas-logs", timeout)


# ------------------------------------------------------------------------------------ the manifest


def test_a_trial_pod_is_restricted_by_construction_and_sees_only_its_own_log_directory() -> None:
    spec = _spec()
    job = build_job(_plain_launch(spec), spec, "team-a", OWNER, experiment_uid=UID)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert not [v for v in pod["volumes"] if "hostPath" in v]
    (logs,) = [v for v in pod["volumes"] if v["name"] == "nas-logs"]
    assert logs == {"name": "nas-logs", "persistentVolumeClaim": {"claimName": "shared"}}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "nas-logs"]
    assert mount == {
        "name": "nas-logs",
        "mountPath": "/nas-logs",
        "subPathExpr": "team-a/digits-mlp-5f0c1d2e/digits-mlp-t3/$(NAS_POD_NAME)",
    }
    env = container["env"]
    assert env[0] == {
        "name": "NAS_POD_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
    }
    assert "--log-dir=/nas-logs" in container["command"]
    assert job["spec"]["podFailurePolicy"] == {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    }
    labels = job["metadata"]["labels"]
    assert labels["nas.operator.dev/experiment-uid"] == UID and labels["nas.operator.dev/experiment"] == "digits-mlp"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert json.loads(job["metadata"]["annotations"]["nas.operator.dev/parameters"])["hidden_size_1"] == 16


def test_the_experiment_uid_comes_from_the_owner_when_not_given_and_separates_re_created_experiments() -> None:
    spec = _spec()
    first = build_job(_plain_launch(spec), spec, "team-a", OWNER)
    again = build_job(_plain_launch(spec), spec, "team-a", {**OWNER, "uid": "99999999-0000"})
    paths = [
        job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][-1]["subPathExpr"] for job in (first, again)
    ]
    assert paths == [
        "team-a/digits-mlp-5f0c1d2e/digits-mlp-t3/$(NAS_POD_NAME)",
        "team-a/digits-mlp-99999999/digits-mlp-t3/$(NAS_POD_NAME)",
    ]


def test_without_a_claim_the_log_directory_is_a_private_empty_dir() -> None:
    spec = _spec("terminationMessage")
    job = build_job(_plain_launch(spec), spec, "team-a", OWNER)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "nas-logs", "emptyDir": {}} in pod["volumes"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "nas-logs"]
    assert mount == {"name": "nas-logs", "mountPath": "/nas-logs"}


def test_job_manifest_from_a_torchx_role_under_a_policy_that_grants_more() -> None:
    spec = _spec(
        resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        serviceAccountName="trainer",
        retries=2,
        mounts=["type=volume,src=datasets,dst=/data,readonly", "type=bind,src=/mnt/cache,dst=/cache"],
        nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    job = build_job(_plain_launch(spec), spec, "team-a", OWNER, policy=LENIENT)
    assert job["metadata"]["name"] == "digits-mlp-t3" and job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["nas.operator.dev/trial-index"] == "3"
    assert job["metadata"]["ownerReferences"] == [OWNER]
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (2, 600)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "trainer"
    assert "automountServiceAccountToken" not in pod  # a named account's token is what its owner asked for
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/nas-operator/trainer:0.1.0"
    assert container["command"] == [
        "python",
        "-m",
        "nas_trainer.mlp",
        "--hidden-size-1=16",
        "--hidden-size-2=8",
        "--learning-rate=0.01",
        "--epochs=1",
        "--dropout=0.1",
        "--batch-size=64",
        "--dataset=digits",
        "--log-dir=/nas-logs",
        "--latency-repeats=20",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["cpu"] == "2"  # TorchX's 2000m as the API server stores it
    assert container["resources"]["requests"]["cpu"] == "1900m"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NAS_TRIAL_NAME"] == "digits-mlp-t3" and env["OMP_NUM_THREADS"] == "1"
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert {"mountPath": "/data", "name": claims["datasets"], "readOnly": True} in container["volumeMounts"]
    host = [v for v in pod["volumes"] if "hostPath" in v]
    assert host[0]["hostPath"]["path"] == "/mnt/cache"  # the platform allowed bind mounts
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]  # TorchX's /dev/shm: restricted-safe
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize(
    ("trial", "field", "rule"),
    [
        ({"mounts": ["type=bind,src=/,dst=/host"]}, "spec.trial.mounts[0]", "trialPolicy.mountTypes: volume"),
        (
            {"mounts": ["type=volume,src=data,dst=/data", "type=device,src=/dev/fuse"]},
            "spec.trial.mounts[1]",
            "trialPolicy.mountTypes",
        ),
        ({"serviceAccountName": "admin"}, "spec.trial.serviceAccountName", "trialPolicy.serviceAccounts: default"),
    ],
)
def test_build_job_refuses_what_the_policy_does_not_grant(trial: dict[str, Any], field: str, rule: str) -> None:
    spec = _spec(**trial)
    with pytest.raises(LaunchError) as refused:
        build_job(_plain_launch(spec), spec, "team-a", OWNER)
    assert field in str(refused.value) and rule in str(refused.value)


def test_a_policy_without_run_as_non_root_leaves_it_out() -> None:
    spec = _spec()
    job = build_job(_plain_launch(spec), spec, "team-a", OWNER, policy=TrialPolicy(run_as_non_root=False))
    assert job["spec"]["template"]["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}


# ------------------------------------------------------------------------------------ a fake API


def _model(data: dict[str, Any], kind: str) -> Any:
    """A client model as the API would return it (every field present, most None)."""
    return client.ApiClient()._ApiClient__deserialize(data, kind)  # type: ignore[attr-defined]


def _job_object(
    owner_uid: str = UID,
    parameters: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    ready: int = 0,
    created: str = "2020-01-01T00:00:00Z",
) -> Any:
    annotation = json.dumps(parameters if parameters is not None else _trial(3).parameters, sort_keys=True)
    return _model(
        {
            "metadata": {
                "name": "digits-mlp-t3",
                "uid": "job-uid",
                "creationTimestamp": created,
                "labels": {"nas.operator.dev/experiment": "digits-mlp"},
                "annotations": {"nas.operator.dev/parameters": annotation},
                "ownerReferences": [{**OWNER, "uid": owner_uid}],
            },
            "status": {"conditions": conditions or [], "ready": ready},
        },
        "V1Job",
    )


def _pod(name: str, phase: str, created: str = "2020-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": {"phase": phase, **status}}


class FakeApi:
    """BatchV1Api and CoreV1Api in one: answers from fields, records every call and its timeout."""

    def __init__(self, job: Any = None, create_error: BaseException | None = None) -> None:
        self.job = job
        self.create_error = create_error
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs.get("_request_timeout")))

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> Any:
        self._record("create_job", kwargs)
        if self.create_error is not None:
            raise self.create_error
        return _model({"metadata": {**body["metadata"], "uid": "new-uid"}}, "V1Job")

    def read_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> Any:
        self._record("read_job", kwargs)
        if self.job is None:
            raise ApiException(status=404, reason="Not Found")
        return self.job

    def delete_namespaced_job(self, name: str, namespace: str, **kwargs: Any) -> None:
        self._record("delete_job", kwargs)
        self.job = None

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        self._record("list_pods", kwargs)
        assert kwargs["label_selector"] == "batch.kubernetes.io/controller-uid=job-uid"
        return _model({"items": self.pods}, "V1PodList")

    def list_namespaced_event(self, namespace: str, **kwargs: Any) -> Any:
        self._record("list_events", kwargs)
        assert "reason=FailedCreate" in kwargs["field_selector"]
        return _model({"items": self.events}, "CoreV1EventList")


def _fake_backend(api: FakeApi, spec: NASExperimentSpec | None = None, **kwargs: Any) -> KubernetesBackend:
    backend = KubernetesBackend(
        client.ApiClient(), "team-a", spec or _spec(), OWNER, Path("/logs"), request_timeout=7.0, **kwargs
    )
    backend.batch = backend.core = api
    return backend


def _conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


def test_a_409_adopts_the_job_only_when_owner_uid_and_parameters_match() -> None:
    spec = _spec()
    api = FakeApi(_job_object(), _conflict())
    assert _fake_backend(api, spec).launch(_plain_launch(spec)) == {"job": "digits-mlp-t3", "uid": "job-uid"}
    assert api.calls == [("create_job", 7.0), ("read_job", 7.0)]

    foreign = FakeApi(_job_object(owner_uid="another-experiment"), _conflict())
    with pytest.raises(LaunchError, match="not owned by this experiment"):
        _fake_backend(foreign, spec).launch(_plain_launch(spec))

    other = FakeApi(_job_object(parameters={**_trial(3).parameters, "epochs": 40}), _conflict())
    with pytest.raises(LaunchError, match="other parameters"):
        _fake_backend(other, spec).launch(_plain_launch(spec))


@pytest.mark.parametrize(
    "error",
    [
        ApiException(status=429, reason="Too Many Requests"),
        ApiException(status=503, reason="Service Unavailable"),
        ApiException(status=500, reason="Internal Server Error"),
        ReadTimeoutError(None, "/apis/batch/v1", "Read timed out."),  # type: ignore[arg-type]
        ConnectionRefusedError("refused"),
    ],
)
def test_throttling_server_errors_and_timeouts_on_create_are_transient(error: BaseException) -> None:
    spec = _spec()
    with pytest.raises(TransientLaunchError):
        _fake_backend(FakeApi(None, error), spec).launch(_plain_launch(spec))


def test_a_create_the_api_server_refuses_for_good_is_a_launch_error_with_its_message() -> None:
    spec = _spec()
    refused = ApiException(status=422, reason="Unprocessable Entity")
    refused.body = json.dumps({"kind": "Status", "message": 'Job.batch "digits-mlp-t3" is invalid: spec.x: bad'})
    with pytest.raises(LaunchError, match=r"422 Job.batch .* is invalid: spec.x: bad"):
        _fake_backend(FakeApi(None, refused), spec).launch(_plain_launch(spec))


def test_a_create_that_landed_but_timed_out_is_adopted_on_the_retry() -> None:
    spec = _spec()
    api = FakeApi(None, ReadTimeoutError(None, "/apis", "Read timed out."))  # type: ignore[arg-type]
    backend = _fake_backend(api, spec)
    with pytest.raises(TransientLaunchError):
        backend.launch(_plain_launch(spec))
    api.job, api.create_error = _job_object(), _conflict()  # it had landed
    assert backend.launch(_plain_launch(spec))["uid"] == "job-uid"


def _running(index: int = 3, started: float = 0.0) -> TrialRecord:
    trial = _trial(index)
    trial.status, trial.started_at, trial.handle = "running", started, {"job": trial.name, "uid": "job-uid"}
    return trial


def test_poll_reads_the_directory_of_the_pod_that_succeeded_and_ignores_a_job_of_another_owner() -> None:
    api = FakeApi(_job_object(conditions=[{"type": "Complete", "status": "True"}]))
    api.pods = [
        _pod("digits-mlp-t3-aaaaa", "Failed", "2020-01-01T00:00:00Z"),
        _pod("digits-mlp-t3-bbbbb", "Succeeded", "2020-01-01T00:01:00Z"),
    ]
    observation = _fake_backend(api).poll(_running())
    assert observation.status == "succeeded"
    assert observation.log_dir == Path("/logs/team-a/digits-mlp-5f0c1d2e/digits-mlp-t3/digits-mlp-t3-bbbbb")
    assert all(timeout == 7.0 for _, timeout in api.calls)

    foreign = FakeApi(_job_object(owner_uid="x", conditions=[{"type": "Complete", "status": "True"}]))
    assert _fake_backend(foreign).poll(_running()).status == "missing"


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "c",
                "image": "registry.invalid/x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ]
    }


def test_a_pod_stuck_in_image_pull_fails_the_trial_after_the_pending_timeout_and_deletes_the_job() -> None:
    api = FakeApi(_job_object())
    api.pods = [_pod("digits-mlp-t3-aaaaa", "Pending", **_waiting("ImagePullBackOff", 'Back-off pulling "x"'))]
    backend = _fake_backend(api, policy=TrialPolicy(pending_timeout_seconds=60))
    created = 1577836800.0  # 2020-01-01T00:00:00Z
    backend.clock = lambda: created + 30
    assert backend.poll(_running(started=created)).status == "running" and api.job is not None
    backend.clock = lambda: created + 61
    observation = backend.poll(_running(started=created))
    assert observation.status == "failed" and api.job is None
    assert "not started after 60s: ImagePullBackOff: Back-off pulling" in observation.message


def test_an_invalid_image_name_fails_at_once_and_an_unschedulable_pod_says_why() -> None:
    api = FakeApi(_job_object())
    api.pods = [_pod("p1", "Pending", **_waiting("InvalidImageName", "couldn't parse image name"))]
    backend = _fake_backend(api, policy=TrialPolicy(pending_timeout_seconds=600))
    backend.clock = lambda: 1577836801.0
    assert "InvalidImageName: couldn't parse image name" in backend.poll(_running(started=1577836800.0)).message

    unschedulable = {
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes match"}
        ]
    }
    api = FakeApi(_job_object())
    api.pods = [_pod("p2", "Pending", **unschedulable)]
    backend = _fake_backend(api, policy=TrialPolicy(pending_timeout_seconds=5))
    backend.clock = lambda: 1577836800.0 + 6
    assert "Unschedulable: 0/1 nodes match" in backend.poll(_running(started=1577836800.0)).message


def test_a_job_that_could_not_create_its_pod_fails_with_the_failed_create_event() -> None:
    api = FakeApi(_job_object())
    api.events = [
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"uid": "job-uid"},
            "reason": "FailedCreate",
            "message": 'Error creating: pods "p" is forbidden: violates PodSecurity "restricted:latest"',
            "lastTimestamp": "2020-01-01T00:00:01Z",
        }
    ]
    backend = _fake_backend(api, policy=TrialPolicy(pending_timeout_seconds=5))
    backend.clock = lambda: 1577836800.0 + 3
    assert backend.poll(_running(started=1577836800.0)).status == "running"
    backend.clock = lambda: 1577836800.0 + 6
    observation = backend.poll(_running(started=1577836800.0))
    assert observation.status == "failed" and 'violates PodSecurity "restricted:latest"' in observation.message


def test_a_ready_pod_is_never_stuck_and_costs_no_pod_listing() -> None:
    api = FakeApi(_job_object(ready=1))
    backend = _fake_backend(api, policy=TrialPolicy(pending_timeout_seconds=5))
    backend.clock = lambda: 1577836800.0 + 1000
    assert backend.poll(_running(started=1577836800.0)).status == "running"
    assert [name for name, _ in api.calls] == ["read_job"]


# ------------------------------------------------------------------------------------ the test control plane


def wait_for_trial(
    backend: KubernetesBackend, trial: TrialRecord, cluster: ControlPlane, timeout: float = 240
) -> Observation:
    """Poll the trial until the backend says it ended (shared with test_trial_jobs_cluster.py)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        observation = backend.poll(trial)
        if observation.status != "running":
            return observation
        time.sleep(0.5)
    raise AssertionError(f"trial {trial.name} did not end; node agent log:\n{cluster.logs('node-agent')}")


def _backend(cluster: ControlPlane, namespace: str, spec: NASExperimentSpec, root: Path) -> KubernetesBackend:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return KubernetesBackend(api, namespace, spec, metrics_root=root)


@pytest.mark.cluster
def test_a_trial_job_writes_tensorboard_logs_to_the_shared_claim(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _pv_and_claim(cluster, namespace, tmp_path)
    spec = _spec("tensorboard")
    backend = _backend(cluster, namespace, spec, tmp_path)
    trial = _trial(0)
    trial.handle = backend.launch(_launch(backend, spec, trial))
    again = backend.launch(_launch(backend, spec, trial))  # a restart re-launching: adopted, same Job
    assert again["uid"] == trial.handle["uid"]
    observation = wait_for_trial(backend, trial, cluster)
    assert observation.status == "succeeded", observation.message
    assert observation.log_dir is not None and observation.log_dir.parent == backend.log_dir("digits-mlp", trial.name)
    metrics = read_trial_metrics(spec, observation.log_dir, None)
    assert metrics["num_params"] == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert 0.0 <= metrics["val_acc"] <= 1.0
    jobs = yaml.safe_load(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "yaml").stdout)["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["digits-mlp-t0"]


@pytest.mark.cluster
def test_metrics_from_the_termination_message_without_shared_storage(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    spec = _spec("terminationMessage")
    backend = _backend(cluster, namespace, spec, tmp_path)
    trial = _trial(1)
    trial.handle = backend.launch(_launch(backend, spec, trial))
    observation = wait_for_trial(backend, trial, cluster)
    assert observation.status == "succeeded", observation.message
    metrics = read_trial_metrics(spec, Path("/nonexistent"), observation.termination_message)
    assert metrics["num_params"] == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert not list(tmp_path.iterdir())  # the trial's /nas-logs was its own, not the operator's


@pytest.mark.cluster
def test_a_failing_trial_reports_exit_code_and_output_and_a_deleted_job_is_missing(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    spec = _spec(
        "terminationMessage", command=["python", "-c"], args=["import sys; print('boom {epochs}'); sys.exit(3)"]
    )
    backend = _backend(cluster, namespace, spec, tmp_path)
    trial = _trial(2)
    trial.handle = backend.launch(_launch(backend, spec, trial))
    observation = wait_for_trial(backend, trial, cluster)
    assert observation.status == "failed" and observation.exit_code == 3
    assert "BackoffLimitExceeded" in observation.message and "boom 1" in observation.message
    backend.kill(trial)
    deadline = time.monotonic() + 60
    while backend.poll(trial).status != "missing":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert "no longer exists" in backend.poll(trial).message


# ------------------------------------------------------------------------------------ nasctl render


def test_render_prints_the_job_of_an_initial_trial_as_the_operators_engine_proposes_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nas_operator.cli import main as nasctl
    from nas_operator.search.engine import Engine

    example = EXAMPLES / "digits-mlp.yaml"
    result = CliRunner().invoke(nasctl, ["render", str(example), "--trial", "2", "-n", "team-a", "--uid", UID])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.output)
    parameters = json.loads(job["metadata"]["annotations"]["nas.operator.dev/parameters"])
    # The operator generates in batches as slots free up: the seeded sequence is the same however it is cut.
    spec = load_experiment(load_yaml(example)).spec
    engine = Engine.create(spec, name="digits-mlp")
    batched = [c.parameters for c in engine.generate(1) + engine.generate(2)]
    assert parameters == json.loads(json.dumps(batched[2]))
    assert job["metadata"]["name"] == "digits-mlp-t2" and job["metadata"]["ownerReferences"][0]["uid"] == UID
    mount = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][-1]
    assert mount["subPathExpr"] == "team-a/digits-mlp-5f0c1d2e/digits-mlp-t2/$(NAS_POD_NAME)"

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"trialPolicy": {"runAsNonRoot": False}}))
    every = [f"--set={k}={v}" for k, v in {**parameters, "epochs": 5}.items()]
    manual = CliRunner().invoke(nasctl, ["render", str(example), "--trial", "9", "--policy", str(values), *every])
    assert manual.exit_code == 0, manual.output
    job = yaml.safe_load(manual.output)
    assert json.loads(job["metadata"]["annotations"]["nas.operator.dev/parameters"])["epochs"] == 5
    assert job["metadata"]["namespace"] == "default"
    assert "runAsNonRoot" not in job["spec"]["template"]["spec"]["securityContext"]


def test_render_refuses_a_spec_the_policy_refuses_and_an_unknown_parameter(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nas_operator.cli import main as nasctl

    document = load_yaml(EXAMPLES / "digits-mlp.yaml")
    document["spec"]["trial"]["mounts"] = ["type=bind,src=/,dst=/host"]
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(document))
    refused = CliRunner().invoke(nasctl, ["render", str(path), "--trial", "0"])
    assert (
        refused.exit_code == 1
        and "spec.trial.mounts[0]" in refused.output
        and "trialPolicy.mountTypes" in refused.output
    )
    assert "Traceback" not in refused.output
    unknown = CliRunner().invoke(
        nasctl, ["render", str(EXAMPLES / "digits-mlp.yaml"), "--trial", "0", "--set", "depth=3"]
    )
    assert unknown.exit_code == 1 and "--set depth: no such parameter" in unknown.output
