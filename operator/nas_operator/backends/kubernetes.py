"""Trials as batch/v1 Jobs, with pod templates built by TorchX.

The pod comes from TorchX's `role_to_pod` (so a TorchX Role's vocabulary — entrypoint, args,
env, resources, mounts — carries over and GPU requests, shared memory and request/limit
ratios are what TorchX users get) wrapped in a plain batch/v1 Job: no Volcano needed. Job
names are deterministic (`<experiment>-t<index>`), so creating one that exists (409) means
it was launched before a restart: it is adopted, never launched twice. A Job that disappears
is a failed trial.

Trials write TensorBoard logs under `<mount>/<experiment>/<trial>` on a shared claim that the
operator reads at `metrics_root/<experiment>/<trial>`; clusters without ReadWriteMany storage
use the termination message instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nas_operator.core.backend import Observation, TrialLaunch
from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import NASExperimentSpec

TRIAL_LOG_MOUNT = "/nas-logs"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
LABEL_EXPERIMENT = "nas.operator.dev/experiment"
LABEL_TRIAL_INDEX = "nas.operator.dev/trial-index"
ANNOTATION_PARAMETERS = "nas.operator.dev/parameters"
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_MEMORY_BYTES = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_cpu(quantity: str) -> float:
    match = _CPU.match(quantity.strip())
    if not match:
        raise ValueError(f'"{quantity}" is not a CPU quantity such as "2" or "500m"')
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def parse_memory_mb(quantity: str) -> int:
    match = _MEMORY.match(quantity.strip())
    if not match:
        raise ValueError(f'"{quantity}" is not a memory quantity such as "4Gi" or "512Mi"')
    return int(float(match.group(1)) * _MEMORY_BYTES[match.group(2)] // 2**20)


def job_name(experiment: str, index: int) -> str:
    return f"{experiment}-t{index}"


def build_job(
    launch: TrialLaunch,
    spec: NASExperimentSpec,
    namespace: str,
    owner_reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Job manifest (a plain dict, as the API server receives it) for one trial."""
    from kubernetes.client import ApiClient
    from torchx import specs
    from torchx.schedulers.kubernetes_scheduler import role_to_pod

    template = spec.trial
    if not template.image:
        raise ValueError("spec.trial.image is required to run trials on Kubernetes")
    resources = template.resources
    resource = specs.Resource(
        cpu=parse_cpu(resources.cpu) if resources.cpu else 1,
        gpu=resources.gpu,
        memMB=parse_memory_mb(resources.memory) if resources.memory else 1024,
    )
    env = dict(launch.env)
    mounts: list[Any] = [m for text in template.mounts for m in specs.parse_mounts(text.split(","))]
    if spec.metrics.source == "tensorboard" and spec.metrics.claim_name:
        mounts.append(specs.VolumeMount(src=spec.metrics.claim_name, dst_path=TRIAL_LOG_MOUNT, read_only=False))
    if spec.metrics.source == "terminationMessage":
        env["NAS_TERMINATION_MESSAGE_PATH"] = TERMINATION_MESSAGE_PATH
    role = specs.Role(
        name="trial",
        image=template.image,
        entrypoint=launch.command[0],
        args=launch.command[1:],
        env=env,
        resource=resource,
        mounts=mounts,
    )
    serializer: Any = ApiClient()  # untyped in the client's stubs
    pod: dict[str, Any] = serializer.sanitize_for_serialization(
        role_to_pod(launch.name, role, service_account=template.service_account_name)
    )
    pod_spec = pod["spec"]
    pod_spec["restartPolicy"] = "Never"
    if template.node_selector:
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **template.node_selector}
    if not pod_spec.get("nodeSelector"):
        pod_spec.pop("nodeSelector", None)
    if template.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in template.tolerations
        ]
    container = pod_spec["containers"][0]
    container["terminationMessagePath"] = TERMINATION_MESSAGE_PATH
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    labels = {
        "app.kubernetes.io/managed-by": "nas-operator",
        "app.kubernetes.io/component": "trial",
        LABEL_EXPERIMENT: launch.experiment,
        LABEL_TRIAL_INDEX: str(launch.index),
    }
    metadata: dict[str, Any] = {
        "name": launch.name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {ANNOTATION_PARAMETERS: json.dumps(launch.parameters, sort_keys=True)},
    }
    if owner_reference is not None:
        metadata["ownerReferences"] = [owner_reference]
    job_spec: dict[str, Any] = {
        "backoffLimit": template.retries,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if launch.timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = int(launch.timeout_seconds)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


class KubernetesBackend:
    """Runs trials as Jobs in one namespace; `metrics_root` is where this process sees the shared claim."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        spec: NASExperimentSpec,
        owner_reference: dict[str, Any] | None = None,
        metrics_root: Path | None = None,
    ) -> None:
        from kubernetes import client

        # Any: the client's models type every field as optional; the API server fills them in.
        self.batch: Any = client.BatchV1Api(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.spec = spec
        self.owner_reference = owner_reference
        self.metrics_root = metrics_root or Path(TRIAL_LOG_MOUNT)

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        return self.metrics_root / experiment / trial_name

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        inside = f"{TRIAL_LOG_MOUNT}/{experiment}/{trial_name}"
        return inside, inside

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        manifest = build_job(launch, self.spec, self.namespace, self.owner_reference)
        try:
            job = self.batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            job = self.batch.read_namespaced_job(launch.name, self.namespace)  # launched before a restart
        return {"job": launch.name, "uid": job.metadata.uid}

    def poll(self, trial: TrialRecord) -> Observation:
        from kubernetes.client.exceptions import ApiException

        name = trial.handle.get("job", trial.name)
        try:
            job = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return Observation("missing", message=f"Job {self.namespace}/{name} no longer exists")
            raise
        if trial.handle.get("uid") and job.metadata.uid != trial.handle["uid"]:
            return Observation("missing", message=f"Job {name} was replaced by another object of that name")
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
        if "Complete" in conditions:
            terminated = self._terminated(name)
            message = terminated.message if terminated is not None else None
            return Observation("succeeded", exit_code=0, termination_message=message)
        if "Failed" in conditions:
            condition = conditions["Failed"]
            terminated = self._terminated(name)
            parts = [f"Job failed: {condition.reason}: {condition.message}"]
            code = None
            if terminated is not None:
                code = terminated.exit_code
                parts.append(f"exit code {terminated.exit_code} ({terminated.reason})")
                if terminated.message:
                    parts.append(f"last output:\n{terminated.message.strip()[-2000:]}")
            return Observation("failed", exit_code=code, message="; ".join(parts))
        return Observation("running")

    def _terminated(self, name: str) -> Any:
        """The last terminated container state among the Job's pods (its exit code and message)."""
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}").items
        states = [
            status.state.terminated
            for pod in pods
            for status in (pod.status.container_statuses or [])
            if status.state is not None and status.state.terminated is not None
        ]
        states.sort(key=lambda s: (s.finished_at is not None, s.finished_at))
        return states[-1] if states else None

    def kill(self, trial: TrialRecord) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(
                trial.handle.get("job", trial.name), self.namespace, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
