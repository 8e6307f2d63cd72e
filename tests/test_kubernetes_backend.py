"""Trials as Jobs: the manifest built through TorchX, and real Jobs run by the test node agent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from nas_operator.backends.kubernetes import KubernetesBackend, build_job, parse_cpu, parse_memory_mb
from nas_operator.core.backend import Observation, render_launch
from nas_operator.core.metrics import read_trial_metrics
from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from tests.k8s.cluster import ControlPlane

from .conftest import EXAMPLES, load_yaml
from .test_cluster import _pv_and_claim


def _spec(source: str = "tensorboard", **trial: Any) -> NASExperimentSpec:
    doc = load_yaml(EXAMPLES / "digits-mlp.yaml")
    doc["spec"]["metrics"].update(source=source, claimName="shared" if source == "tensorboard" else None)
    doc["spec"]["trial"].update(trial)
    doc["spec"]["trial"]["args"] = [
        a.replace("--dataset=digits", "--dataset=digits") for a in doc["spec"]["trial"]["args"]
    ]
    doc["spec"]["trial"]["args"].append("--latency-repeats=20")
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


def _launch(backend: KubernetesBackend, spec: NASExperimentSpec, trial: TrialRecord, timeout: float | None = None):  # type: ignore[no-untyped-def]
    log_dir, trial_dir = backend.trial_paths("digits-mlp", trial.name)
    return render_launch("digits-mlp", trial, spec.trial, log_dir, trial_dir, timeout)


def test_quantities() -> None:
    assert (parse_cpu("500m"), parse_cpu("2"), parse_memory_mb("1Gi"), parse_memory_mb("512Mi")) == (
        0.5,
        2.0,
        1024,
        512,
    )
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_memory_mb("lots")


def test_job_manifest_from_a_torchx_role() -> None:
    spec = _spec(
        resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        serviceAccountName="trainer",
        retries=2,
        mounts=["type=volume,src=datasets,dst=/data,readonly", "type=bind,src=/mnt/cache,dst=/cache"],
        nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    owner = {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "name": "digits-mlp",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    backend_paths = ("/nas-logs/digits-mlp/digits-mlp-t3", "/nas-logs/digits-mlp/digits-mlp-t3")
    launch = render_launch("digits-mlp", _trial(3), spec.trial, *backend_paths, 600.0)
    job = build_job(launch, spec, "team-a", owner)
    assert job["metadata"]["name"] == "digits-mlp-t3" and job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["nas.operator.dev/trial-index"] == "3"
    assert job["metadata"]["ownerReferences"] == [owner]
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (2, 600)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "trainer"
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
        "--log-dir=/nas-logs/digits-mlp/digits-mlp-t3",
        "--latency-repeats=20",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["cpu"] == "2000m"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NAS_TRIAL_NAME"] == "digits-mlp-t3" and env["OMP_NUM_THREADS"] == "1"
    claim = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    by_claim = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in claim}
    assert {"mountPath": "/nas-logs", "name": by_claim["shared"], "readOnly": False} in container["volumeMounts"]
    assert {"mountPath": "/data", "name": by_claim["datasets"], "readOnly": True} in container["volumeMounts"]
    host = [v for v in pod["volumes"] if "hostPath" in v]
    assert host[0]["hostPath"]["path"] == "/mnt/cache"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _wait(backend: KubernetesBackend, trial: TrialRecord, cluster: ControlPlane, timeout: float = 240) -> Observation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        observation = backend.poll(trial)
        if observation.status != "running":
            return observation
        time.sleep(0.5)
    raise AssertionError(f"trial did not end; node agent log:\n{cluster.logs('node-agent')}")


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
    observation = _wait(backend, trial, cluster)
    assert observation.status == "succeeded", observation.message
    metrics = read_trial_metrics(spec, backend.log_dir("digits-mlp", trial.name), None)
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
    observation = _wait(backend, trial, cluster)
    assert observation.status == "succeeded", observation.message
    metrics = read_trial_metrics(spec, Path("/nonexistent"), observation.termination_message)
    assert metrics["num_params"] == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10


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
    observation = _wait(backend, trial, cluster)
    assert observation.status == "failed" and observation.exit_code == 3
    assert "BackoffLimitExceeded" in observation.message and "boom 1" in observation.message
    backend.kill(trial)
    deadline = time.monotonic() + 60
    while backend.poll(trial).status != "missing":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert "no longer exists" in backend.poll(trial).message
