"""Trials as batch/v1 Jobs, with pod templates built by TorchX, under the platform's trial policy.

The pod comes from TorchX's `role_to_pod` (so a TorchX Role's vocabulary — entrypoint, args,
env, resources, mounts — carries over and GPU requests, shared memory and request/limit
ratios are what TorchX users get) wrapped in a plain batch/v1 Job: no Volcano needed. Job
names are deterministic (`<experiment>-t<index>`), so creating one that exists (409) means
it was launched before a restart, or a create timed out after it landed: it is adopted only
when its owner is this experiment (uid) and it was created with the same parameters, never
launched twice and never mistaken for another experiment's Job.

Trial pods are built to pass Pod Security admission at level `restricted` (the trial policy
may grant more, never the spec): no privilege, all capabilities dropped, RuntimeDefault
seccomp, non-root, no ServiceAccount token unless the policy lets the spec name an account.

Each trial pod sees only its own directory of the shared metrics claim, at /nas-logs:
`<namespace>/<experiment>-<uid8>/<trial>/<pod>` through subPathExpr, so two teams (or a
re-created experiment, or a retried pod) never read or plant each other's event files; the
operator reads the directory of the pod that succeeded. Clusters without ReadWriteMany
storage use the termination message instead.

A Job can also sit forever without running anything (an image that cannot be pulled, a pod
no node fits, a pod admission refuses): after the policy's pending timeout the trial fails
with the pod's own reason and its Job is deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from urllib3.exceptions import HTTPError as ConnectionFailure

from nas_operator.core.backend import LaunchError, Observation, TransientLaunchError, TrialLaunch
from nas_operator.core.progress import newest_subdirectory
from nas_operator.core.state import TrialRecord
from nas_operator.resource.policy import TrialPolicy, check_policy
from nas_operator.resource.quantities import cpu_cores, memory_bytes, parse_quantity
from nas_operator.resource.spec import NASExperimentSpec

TRIAL_LOG_MOUNT = "/nas-logs"
TRIAL_LOG_VOLUME = "nas-logs"
POD_NAME_ENV = "NAS_POD_NAME"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
LABEL_EXPERIMENT = "nas.operator.dev/experiment"
LABEL_EXPERIMENT_UID = "nas.operator.dev/experiment-uid"
LABEL_TRIAL_INDEX = "nas.operator.dev/trial-index"
ANNOTATION_PARAMETERS = "nas.operator.dev/parameters"
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # set by the Job controller on the Job's pods
# Waiting reasons that no amount of waiting fixes: the trial fails at once, not after the pending timeout.
FINAL_WAITING_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        *FINAL_WAITING_REASONS,
    }
)
# A launched Job the watch cache has not shown yet is read from the API server after this long.
UNSEEN_JOB_CHECK_SECONDS = 5.0
# A 409 means "exists": adopt. These mean "not now": the loop retries with backoff.
TRANSIENT_STATUSES = frozenset({0, 401, 408, 429, 500, 502, 503, 504})


class TrialObjectCache(Protocol):
    """Where Jobs and Pods may be read without a request (cluster/trial_watch.py); None means "ask the server"."""

    def job(self, namespace: str, name: str) -> Any | None: ...

    def pods(self, namespace: str, job_uid: str) -> list[Any] | None: ...


_MOUNT_KINDS = {"BindMount": "bind", "VolumeMount": "volume", "DeviceMount": "device"}


def job_name(experiment: str, index: int) -> str:
    return f"{experiment}-t{index}"


def experiment_path(namespace: str, experiment: str, uid: str) -> str:
    """The experiment's directory on the shared volume, relative to its root.

    The uid keeps a re-created experiment of the same name from reading the old one's events.
    """
    return f"{namespace}/{experiment}-{uid[:8]}" if uid else f"{namespace}/{experiment}"


def build_job(
    launch: TrialLaunch,
    spec: NASExperimentSpec,
    namespace: str,
    owner_reference: dict[str, Any] | None,
    *,
    experiment_uid: str = "",
    policy: TrialPolicy | None = None,
) -> dict[str, Any]:
    """The Job manifest (a plain dict, as the API server receives it) for one trial.

    The policy is checked again here (validation checked it already), as defence in depth: an
    operator started with a stricter policy than the one a stored spec was validated under must
    not create what the new policy refuses. LaunchError names the field and the policy value.
    """
    from kubernetes.client import ApiClient
    from torchx import specs
    from torchx.schedulers.kubernetes_scheduler import role_to_pod

    policy = policy or TrialPolicy()
    uid = experiment_uid or str((owner_reference or {}).get("uid") or "")
    # The launch's own template is the one checked and built (stage 2's is spec.fullTraining's overrides merged in).
    spec = spec.model_copy(update={"trial": launch.template})
    template = spec.trial
    if not template.image:
        raise LaunchError("spec.trial.image is required to run trials on Kubernetes")
    refused = check_policy(spec, policy)
    if refused:
        raise LaunchError("; ".join(str(problem) for problem in refused))
    resources = template.resources
    try:
        resource = specs.Resource(
            cpu=cpu_cores(resources.cpu) if resources.cpu else 1,
            gpu=resources.gpu,
            memMB=memory_bytes(resources.memory) // 2**20 if resources.memory else 1024,
        )
        mounts: list[Any] = [m for text in template.mounts for m in specs.parse_mounts(text.split(","))]
    except ValueError as exc:
        raise LaunchError(f"spec.trial: {exc}") from None
    for index, mount in enumerate(mounts):
        kind = _MOUNT_KINDS.get(type(mount).__name__, type(mount).__name__)
        if kind not in policy.mount_types:
            raise LaunchError(
                f"spec.trial.mounts[{index}]: type {kind} is not allowed by the trial policy "
                f"(trialPolicy.mountTypes: {', '.join(policy.mount_types) or 'none'})"
            )
    env = dict(launch.env)
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
    account = template.service_account_name
    serializer: Any = ApiClient()  # untyped in the client's stubs
    pod: dict[str, Any] = serializer.sanitize_for_serialization(role_to_pod(launch.name, role, service_account=account))
    pod_spec = pod["spec"]
    pod_spec["restartPolicy"] = "Never"
    if account is None:
        pod_spec.pop("serviceAccountName", None)
        pod_spec["automountServiceAccountToken"] = False  # the default account's token is nobody's business
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
    container.pop("ports", None)  # TorchX emits an empty list
    for kind in ("limits", "requests"):
        amounts = (container.get("resources") or {}).get(kind) or {}
        for name, amount in amounts.items():
            amounts[name] = canonical_quantity(amount)
    _mount_trial_logs(pod_spec, container, spec, namespace, launch, uid)
    _restrict(pod_spec, container, policy)
    labels = {
        "app.kubernetes.io/managed-by": "nas-operator",
        "app.kubernetes.io/component": "trial",
        LABEL_EXPERIMENT: launch.experiment,
        LABEL_TRIAL_INDEX: str(launch.index),
    }
    if uid:
        labels[LABEL_EXPERIMENT_UID] = uid
    metadata: dict[str, Any] = {
        "name": launch.name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {ANNOTATION_PARAMETERS: _parameters_annotation(launch.parameters)},
    }
    if owner_reference is not None:
        metadata["ownerReferences"] = [owner_reference]
    pod_metadata = {**(pod.get("metadata") or {}), "labels": dict(labels)}
    job_spec: dict[str, Any] = {
        "backoffLimit": template.retries,
        # Eviction, preemption and node drains are the cluster's doing, not the trial's: the pod is replaced
        # without counting towards backoffLimit (or the experiment's failure rate). Any other failure counts.
        "podFailurePolicy": {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        },
        "template": {"metadata": pod_metadata, "spec": pod_spec},
    }
    if launch.timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = int(launch.timeout_seconds)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


_DECIMAL_SUFFIXES = (("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3), ("", 0), ("m", -3), ("u", -6))


def canonical_quantity(text: str) -> str:
    """A decimal quantity as the API server stores it ("1000m" is "1", "0M" is "0"), so that `nasctl render`
    prints what `kubectl get job -o yaml` will show. Binary ("Gi") quantities keep their own form there."""
    if text.endswith("i"):
        return text
    value = parse_quantity(text)
    if value == 0:
        return "0"
    for suffix, exponent in _DECIMAL_SUFFIXES:
        mantissa = value.scaleb(-exponent)
        if mantissa == mantissa.to_integral_value():
            return f"{int(mantissa)}{suffix}"
    return text


def _mount_trial_logs(
    pod_spec: dict[str, Any],
    container: dict[str, Any],
    spec: NASExperimentSpec,
    namespace: str,
    launch: TrialLaunch,
    uid: str,
) -> None:
    """/nas-logs: the pod's own directory of the metrics claim, or an emptyDir when metrics go another way.

    The emptyDir keeps `{log_dir}` writable for a non-root user in an image without that directory.
    """
    env = container.setdefault("env", [])
    env.insert(0, {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
    mount: dict[str, Any] = {"name": TRIAL_LOG_VOLUME, "mountPath": TRIAL_LOG_MOUNT}
    if spec.metrics.source == "tensorboard" and spec.metrics.claim_name:
        volume: dict[str, Any] = {
            "name": TRIAL_LOG_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.metrics.claim_name},
        }
        mount["subPathExpr"] = f"{experiment_path(namespace, launch.experiment, uid)}/{launch.name}/$({POD_NAME_ENV})"
    else:
        volume = {"name": TRIAL_LOG_VOLUME, "emptyDir": {}}
    pod_spec.setdefault("volumes", []).append(volume)
    container.setdefault("volumeMounts", []).append(mount)


def _restrict(pod_spec: dict[str, Any], container: dict[str, Any], policy: TrialPolicy) -> None:
    """Pod Security `restricted` by construction; only a device mount the policy allows makes a pod privileged."""
    pod_spec["securityContext"] = {
        **({"runAsNonRoot": True} if policy.run_as_non_root else {}),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    privileged = bool((container.get("securityContext") or {}).get("privileged"))
    context: dict[str, Any] = {"privileged": privileged, "capabilities": {"drop": ["ALL"]}}
    if not privileged:  # the API server refuses allowPrivilegeEscalation false on a privileged container
        context["allowPrivilegeEscalation"] = False
    container["securityContext"] = context


def _parameters_annotation(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True)


def _same_parameters(annotation: str | None, parameters: dict[str, Any]) -> bool:
    if annotation is None:
        return False
    try:
        return bool(json.loads(annotation) == json.loads(_parameters_annotation(parameters)))
    except ValueError:
        return False


def _owner_uids(obj: Any) -> list[str]:
    return [str(ref.uid) for ref in (obj.metadata.owner_references or [])]


def _api_message(exc: Any) -> str:
    """The API server's own message (a Status body) rather than the client's dump of headers."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError, TypeError):
        return str(getattr(exc, "reason", None) or exc)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class KubernetesBackend:
    """Runs trials as Jobs in one namespace; `metrics_root` is where this process sees the shared claim."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        spec: NASExperimentSpec,
        owner_reference: dict[str, Any] | None = None,
        metrics_root: Path | None = None,
        *,
        experiment_uid: str = "",
        policy: TrialPolicy | None = None,
        request_timeout: float = 30.0,
        objects: TrialObjectCache | None = None,
    ) -> None:
        from kubernetes import client

        # Any: the client's models type every field as optional; the API server fills them in.
        self.batch: Any = client.BatchV1Api(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.spec = spec
        self.owner_reference = owner_reference
        self.metrics_root = metrics_root or Path(TRIAL_LOG_MOUNT)
        self.experiment_uid = experiment_uid or str((owner_reference or {}).get("uid") or "")
        self.policy = policy or TrialPolicy()
        self.request_timeout = request_timeout
        self.objects = objects
        self.clock = time.time

    # ------------------------------------------------------------------------------- paths

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        """The trial's directory; each of its pods writes in a subdirectory named after the pod."""
        return self.metrics_root / experiment_path(self.namespace, experiment, self.experiment_uid) / trial_name

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        """The directory of the trial's newest pod (a retried pod starts a new one; no API call needed)."""
        return newest_subdirectory(self.log_dir(experiment, trial.name))

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        return TRIAL_LOG_MOUNT, TRIAL_LOG_MOUNT

    # ------------------------------------------------------------------------------- launch

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        manifest = build_job(
            launch,
            self.spec,
            self.namespace,
            self.owner_reference,
            experiment_uid=self.experiment_uid,
            policy=self.policy,
        )
        try:
            job = self.batch.create_namespaced_job(self.namespace, manifest, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 409:  # launched before a restart, or a create that timed out after it landed
                job = self._adopt(launch)
            elif exc.status in TRANSIENT_STATUSES or exc.status >= 500:
                raise TransientLaunchError(f"creating Job {launch.name}: {exc.status} {_api_message(exc)}") from None
            else:
                raise LaunchError(
                    f"the API server refused Job {self.namespace}/{launch.name}: {exc.status} {_api_message(exc)}"
                ) from None
        except (OSError, ConnectionFailure) as exc:  # timeouts, refused or reset connections
            raise TransientLaunchError(f"creating Job {launch.name}: {type(exc).__name__}: {exc}") from None
        return {"job": launch.name, "uid": job.metadata.uid}

    def _adopt(self, launch: TrialLaunch) -> Any:
        """The existing Job of this trial's name, if it is this trial's: this experiment's uid, these parameters."""
        job = self._read_job_or_transient(launch.name)
        where = f"Job {self.namespace}/{launch.name}"
        if self.experiment_uid and self.experiment_uid not in _owner_uids(job):
            raise LaunchError(
                f"{where} exists but is not owned by this experiment (uid {self.experiment_uid}); "
                "its result is not recorded"
            )
        annotation = (job.metadata.annotations or {}).get(ANNOTATION_PARAMETERS)
        if not _same_parameters(annotation, launch.parameters):
            raise LaunchError(
                f"{where} exists but was created with other parameters ({annotation}); its result is not recorded"
            )
        return job

    def _read_job_or_transient(self, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.batch.read_namespaced_job(name, self.namespace, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 404:  # deleted between the 409 and the read: the next try creates it
                raise TransientLaunchError(f"Job {name} existed, then vanished") from None
            if exc.status in TRANSIENT_STATUSES or exc.status >= 500:
                raise TransientLaunchError(f"reading Job {name}: {exc.status} {_api_message(exc)}") from None
            raise LaunchError(f"reading Job {self.namespace}/{name}: {exc.status} {_api_message(exc)}") from None
        except (OSError, ConnectionFailure) as exc:
            raise TransientLaunchError(f"reading Job {name}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------------------- poll

    def poll(self, trial: TrialRecord) -> Observation:
        from kubernetes.client.exceptions import ApiException

        name = trial.handle.get("job", trial.name)
        job = self.objects.job(self.namespace, name) if self.objects is not None else None
        if job is not None and not self._is_trials(job, trial):
            job = None  # an older object of that name the watch has not dropped yet: the server decides
        if job is None:  # not watched, not synced, not seen yet (just created) or pruned: ask the API server
            try:
                job = self.batch.read_namespaced_job(name, self.namespace, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return Observation("missing", message=f"Job {self.namespace}/{name} no longer exists")
                raise
        if trial.handle.get("uid") and job.metadata.uid != trial.handle["uid"]:
            return Observation("missing", message=f"Job {name} was replaced by another object of that name")
        if self.experiment_uid and self.experiment_uid not in _owner_uids(job):
            return Observation("missing", message=f"Job {name} is not owned by this experiment; ignored")
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
        if "Complete" in conditions:
            pods = self._pods(job)
            succeeded = [p for p in pods if p.status.phase == "Succeeded"]
            terminated = _last_terminated(succeeded or pods)
            message = terminated.message if terminated is not None else None
            log_dir = None
            if succeeded:
                experiment = (job.metadata.labels or {}).get(LABEL_EXPERIMENT) or _name_of(self.owner_reference)
                if experiment:
                    log_dir = self.log_dir(experiment, trial.name) / succeeded[-1].metadata.name
            return Observation("succeeded", exit_code=0, termination_message=message, log_dir=log_dir)
        if "Failed" in conditions:
            condition = conditions["Failed"]
            terminated = _last_terminated(self._pods(job))
            parts = [f"Job failed: {condition.reason}: {condition.message}"]
            code = None
            if terminated is not None:
                code = terminated.exit_code
                parts.append(f"exit code {terminated.exit_code} ({terminated.reason})")
                if terminated.message:
                    parts.append(f"last output:\n{terminated.message.strip()[-2000:]}")
            return Observation("failed", exit_code=code, message="; ".join(parts))
        stuck = self._stuck(job, trial)
        if stuck is not None:
            self.kill(trial)
            return Observation("failed", message=stuck)
        return Observation("running")

    def _is_trials(self, job: Any, trial: TrialRecord) -> bool:
        uid = trial.handle.get("uid")
        owned = not self.experiment_uid or self.experiment_uid in _owner_uids(job)
        return owned and (not uid or job.metadata.uid == uid)

    def next_check(self, trial: TrialRecord) -> float | None:
        """Seconds until the trial may pass the pending timeout, read from the watch cache (no request).

        A pod stuck in Pending produces no further event, so without this the stuck check would never run again;
        a trial whose pod runs needs no timer at all. None without a cache: the caller's resync timer polls instead.
        """
        if self.objects is None:
            return None
        name = trial.handle.get("job", trial.name)
        job = self.objects.job(self.namespace, name)
        if job is None:
            return UNSEEN_JOB_CHECK_SECONDS  # created a moment ago, or the watch is down: look (GET) again soon
        if (job.status.ready or 0) > 0 or job_ended(job):
            return None
        pods = self.objects.pods(self.namespace, job.metadata.uid) or []
        live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase != "Failed"]
        if any(p.status.phase in ("Running", "Succeeded") for p in live):
            return None
        # The same anchors as _stuck(): every pod's creation counts, failed ones too (a pod-retry backoff).
        anchors = [trial.started_at, _epoch(job.metadata.creation_timestamp)]
        anchors += [_epoch(p.metadata.creation_timestamp) for p in (live or pods)]
        since = max((a for a in anchors if a is not None), default=self.clock())
        return max(1.0, since + self.policy.pending_timeout_seconds + 1.0 - self.clock())

    def _pods(self, job: Any) -> list[Any]:
        """The pods of this very Job (by its uid: never those of an earlier Job of the same name), oldest first.

        From the watch cache when it has them; but a Job that ended is concluded from its pods' terminated states
        (exit code, termination message), and two watches give no order between a pod's last update and its Job's,
        so an ended Job whose cached pods show no terminated container is listed from the API server.
        """
        cached = self.objects.pods(self.namespace, job.metadata.uid) if self.objects is not None else None
        if cached is not None and (not job_ended(job) or _last_terminated(cached) is not None):
            pods = cached
        else:
            pods = self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{LABEL_CONTROLLER_UID}={job.metadata.uid}",
                _request_timeout=self.request_timeout,
            ).items
        return sorted(pods, key=lambda p: (_epoch(p.metadata.creation_timestamp) or 0.0, p.metadata.name))

    def _stuck(self, job: Any, trial: TrialRecord) -> str | None:
        """Why the trial cannot start, once it has waited past the pending timeout (or at once when it never will).

        Only pods still waiting count: one that ran and was evicted is replaced by the Job, and the
        replacement gets its own pending time.
        """
        if (job.status.ready or 0) > 0:
            return None  # a pod runs: nothing is stuck (and no pod listing is needed)
        now = self.clock()
        timeout = self.policy.pending_timeout_seconds
        pods = self._pods(job)
        live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase not in ("Failed",)]
        if any(p.status.phase in ("Running", "Succeeded") for p in live):
            return None
        for pod in live:
            reason = _waiting_reason(pod)
            since = _epoch(pod.metadata.creation_timestamp) or trial.started_at or now
            if reason is not None and reason[0] in FINAL_WAITING_REASONS:
                return f"pod {pod.metadata.name} cannot start: {reason[0]}: {reason[1]}; Job deleted"
            if now - since > timeout:
                cause = reason or _unscheduled(pod) or ("Pending", "the pod has not started")
                return f"pod {pod.metadata.name} not started after {timeout:g}s: {cause[0]}: {cause[1]}; Job deleted"
        if live:
            return None
        # No pod waits: none was created (admission, a quota), or one ended and its replacement is not made yet.
        anchors = [trial.started_at, _epoch(job.metadata.creation_timestamp)]
        anchors += [_epoch(p.metadata.creation_timestamp) for p in pods]
        since = max((a for a in anchors if a is not None), default=now)
        if now - since <= timeout:
            return None
        failure = self._no_pod_cause(job)
        if failure is None:
            return None
        return f"no pod started after {timeout:g}s: {failure}; Job deleted"

    def _no_pod_cause(self, job: Any) -> str | None:
        """Why the Job made no pod: its FailedCreate Events (admission, quota) or a condition of its own."""
        events = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.uid={job.metadata.uid},reason=FailedCreate",
            _request_timeout=self.request_timeout,
        ).items
        if events:
            latest = max(events, key=lambda e: _epoch(e.last_timestamp or e.event_time or e.first_timestamp) or 0.0)
            return f"{latest.reason}: {latest.message}"
        conditions = [c for c in (job.status.conditions or []) if c.status == "True"]
        if conditions:
            return "; ".join(f"{c.type}: {c.reason}: {c.message}" for c in conditions)
        return None

    # ------------------------------------------------------------------------------- kill

    def kill(self, trial: TrialRecord) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(
                trial.handle.get("job", trial.name),
                self.namespace,
                propagation_policy="Background",
                _request_timeout=self.request_timeout,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


def job_ended(job: Any) -> bool:
    """Whether a Job reached Complete or Failed (a Suspended or other condition is not an end)."""
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])


def _name_of(owner_reference: dict[str, Any] | None) -> str:
    return str((owner_reference or {}).get("name") or "")


def _waiting_reason(pod: Any) -> tuple[str, str] | None:
    for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
        waiting = status.state.waiting if status.state is not None else None
        if waiting is not None and waiting.reason in STUCK_WAITING_REASONS:
            return str(waiting.reason), str(waiting.message or "")
    return None


def _unscheduled(pod: Any) -> tuple[str, str] | None:
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return str(condition.reason or "Unschedulable"), str(condition.message or "")
    return None


def _last_terminated(pods: Iterable[Any]) -> Any:
    """The last terminated container state among the pods (its exit code and message)."""
    states = [
        status.state.terminated
        for pod in pods
        for status in (pod.status.container_statuses or [])
        if status.state is not None and status.state.terminated is not None
    ]
    states.sort(key=lambda s: (s.finished_at is not None, s.finished_at))
    return states[-1] if states else None
