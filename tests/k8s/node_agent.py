"""A test node agent: a Node object and a stand-in kubelet that runs pods' commands on this machine.

It is a fake kubelet. There is no container runtime here, so the image is ignored and the
project's Python environment stands in for it: the pod's first container runs its `command` +
`args` as a local process, with the pod's env (values, field refs, ConfigMap and Secret keys).
Volumes become directories: a PersistentVolumeClaim one shared directory per claim, so a
"shared TensorBoard volume" is real (a claim bound to a hostPath PersistentVolume uses that
path); an emptyDir one per pod; a hostPath itself. A mount's `subPath`, or its `subPathExpr`
with `$(VAR)` expanded from the container's env (as the kubelet does), selects a directory of
the volume, created when missing. Because the process sees this machine's filesystem, each
mount path (and the termination message path) is rewritten to its directory wherever it
appears in command, args, env and workingDir.

Fake container filesystem: any other absolute path in command, args, env or workingDir whose
top-level directory does not exist on this machine (`/nas-logs` when nothing is mounted there,
say) is rewritten into `<pod dir>/rootfs/<path>`, so what a trial writes outside its mounts stays
private to its pod, as in a container's own filesystem, and never lands in a directory that
another pod or the operator reads by accident.

Fake registry: an image under `registry.invalid/` stands in for a registry that cannot be
reached: the container waits in ErrImagePull, then ImagePullBackOff, and never runs.

Pod status goes Pending -> Running -> Succeeded/Failed with the real exit code, reason and
termination message, so the real Job controller completes or fails the Job. A pod that is
deleted (or whose Job is, or that is evicted through the Eviction API) has its process group
killed; as a kubelet does, the agent then reports the pod's terminal phase (Failed unless it had
succeeded, keeping the conditions the API server added, such as DisruptionTarget, so the Job
controller applies its podFailurePolicy) and only then removes it with grace 0.

    python -m tests.k8s.node_agent --kubeconfig admin.kubeconfig --node nas-test-node --root DIR
"""

from __future__ import annotations

import argparse
import base64
import datetime
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("node-agent")
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
UNREACHABLE_REGISTRY = "registry.invalid/"
PULL_BACKOFF_AFTER = 1.0  # seconds in ErrImagePull before ImagePullBackOff, as a kubelet's first retry
_ABSOLUTE = re.compile(r"(?:^|(?<=[\s=:,'\"(\[]))/([A-Za-z0-9._-]+)")
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "250", "nvidia.com/gpu": "8", "ephemeral-storage": "100Gi"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    container: str
    process: subprocess.Popen[bytes]
    started_at: str
    termination_file: Path
    log_file: Path
    policy: str
    restart_policy: str
    spec: Any = None
    restarts: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PullingPod:
    """A pod waiting forever for an image from the unreachable registry (the fake registry)."""

    namespace: str
    name: str
    container: str
    image: str
    since: float
    backing_off: bool = False


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: a defined variable is replaced, `$$` is a `$`, anything else stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VARIABLE.sub(replace, text)


def private_paths(text: str, rootfs: Path) -> str:
    """Absolute paths under a top-level directory this machine lacks, moved into the pod's own fake rootfs."""

    def replace(match: re.Match[str]) -> str:
        top = match.group(1)
        return match.group(0) if Path("/", top).exists() else str(rootfs / top)

    return _ABSOLUTE.sub(replace, text)


class NodeAgent:
    def __init__(self, api: client.ApiClient, node: str, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.root = root
        self.pods: dict[str, RunningPod] = {}
        self.starting: set[str] = set()
        self.terminated: set[str] = set()  # deleted pods, so that a stale listing never starts one again
        self.pulling: dict[str, PullingPod] = {}  # pods whose image is "pulled" from the unreachable registry
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # ----------------------------------------------------------------- node

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node, "nas-test": "true"}},
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        status = {
            "status": {
                "capacity": CAPACITY,
                "allocatable": CAPACITY,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "NodeAgentReady",
                        "message": "test node agent is running",
                        "lastHeartbeatTime": now(),
                        "lastTransitionTime": now(),
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "nodeInfo": {
                    "machineID": "test",
                    "systemUUID": "test",
                    "bootID": "test",
                    "kernelVersion": os.uname().release,
                    "osImage": "nas-operator test node",
                    "containerRuntimeVersion": "local-process://1",
                    "kubeletVersion": "v0.0.0-test",
                    "kubeProxyVersion": "v0.0.0-test",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
        }
        self.core.patch_node_status(self.node, status)
        self.untaint()

    def untaint(self) -> None:
        """Drop taints a kubelet would have cleared (not-ready at creation); this node is always ready."""
        node = self.core.read_node(self.node)
        if node.spec.taints:
            log.info("removing taints %s", [t.key for t in node.spec.taints])
            self.core.patch_node(self.node, {"spec": {"taints": None}})

    # ----------------------------------------------------------------- pods

    def sync(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            self._terminate(pod)
            return
        if pod.status.phase in ("Succeeded", "Failed"):
            return
        if pod.status.phase != "Pending":
            return
        # The watch and the resync thread both sync every pod: claim it under the lock so that only one of them
        # starts its process (two would leave one process that no deletion ever kills).
        with self.lock:
            if uid in self.pods or uid in self.starting or uid in self.terminated or uid in self.pulling:
                return
            self.starting.add(uid)
        try:
            self._start(pod)
        finally:
            with self.lock:
                self.starting.discard(uid)

    def _volume_dirs(self, pod: Any, pod_dir: Path) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            if volume.persistent_volume_claim is not None:
                path = self._claim_dir(pod.metadata.namespace, volume.persistent_volume_claim.claim_name)
            elif volume.host_path is not None:
                path = Path(volume.host_path.path)
            elif volume.config_map is not None:
                path = pod_dir / "volumes" / volume.name
                path.mkdir(parents=True, exist_ok=True)
                cm = self.core.read_namespaced_config_map(volume.config_map.name, pod.metadata.namespace)
                for key, value in (cm.data or {}).items():
                    (path / key).write_text(value)
            elif volume.secret is not None:
                path = pod_dir / "volumes" / volume.name
                path.mkdir(parents=True, exist_ok=True)
                secret = self.core.read_namespaced_secret(volume.secret.secret_name, pod.metadata.namespace)
                for key, value in (secret.data or {}).items():
                    (path / key).write_bytes(base64.b64decode(value))
            else:  # emptyDir, projected token volumes and the rest: a per-pod directory
                path = pod_dir / "volumes" / volume.name
            path.mkdir(parents=True, exist_ok=True)
            dirs[volume.name] = path
        return dirs

    def _claim_dir(self, namespace: str, claim_name: str) -> Path:
        """The bound PersistentVolume's hostPath when it has one (as a kubelet mounts it), else a dir per claim."""
        claim = self.core.read_namespaced_persistent_volume_claim(claim_name, namespace)
        if claim.spec.volume_name:
            volume = self.core.read_persistent_volume(claim.spec.volume_name)
            if volume.spec.host_path is not None:
                return Path(volume.spec.host_path.path)
        return self.root / "pvc" / namespace / claim_name

    def _env(self, pod: Any, container: Any) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            source = var.value_from
            if source.field_ref is not None:
                fields = {
                    "metadata.name": pod.metadata.name,
                    "metadata.namespace": pod.metadata.namespace,
                    "metadata.uid": pod.metadata.uid,
                    "spec.nodeName": self.node,
                    "spec.serviceAccountName": pod.spec.service_account_name or "default",
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                }
                env[var.name] = fields.get(source.field_ref.field_path, "")
            elif source.secret_key_ref is not None:
                ref = source.secret_key_ref
                secret = self.core.read_namespaced_secret(ref.name, pod.metadata.namespace)
                env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
            elif source.config_map_key_ref is not None:
                ref = source.config_map_key_ref
                env[var.name] = (self.core.read_namespaced_config_map(ref.name, pod.metadata.namespace).data or {})[
                    ref.key
                ]
        return env

    def _start(self, pod: Any) -> None:
        uid = pod.metadata.uid
        container = pod.spec.containers[0]
        pod_dir = self.root / "pods" / uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        if (container.image or "").startswith(UNREACHABLE_REGISTRY):
            self._pull_forever(pod, container)
            return
        if not container.command:
            self._finish_status(pod, container.name, now(), 128, "NoCommand", "the test node runs commands only")
            return
        volumes = self._volume_dirs(pod, pod_dir)
        pod_env = self._env(pod, container)
        termination_path = container.termination_message_path or DEFAULT_TERMINATION_PATH
        termination_file = pod_dir / "termination-log"
        termination_file.touch()
        mapping = {termination_path: str(termination_file)}
        for mount in container.volume_mounts or []:
            if mount.name in volumes:
                sub_path = expand(mount.sub_path_expr, pod_env) if mount.sub_path_expr else (mount.sub_path or "")
                if sub_path.startswith("/") or ".." in Path(sub_path).parts:
                    message = (
                        f"failed to prepare subPath for volumeMount {mount.name!r}: "
                        f"{sub_path!r} is not a relative path inside the volume"
                    )
                    self._waiting(pod, container, "CreateContainerConfigError", message)
                    return
                target = volumes[mount.name] / sub_path
                target.mkdir(parents=True, exist_ok=True)
                mapping[mount.mount_path.rstrip("/")] = str(target)
        rootfs = pod_dir / "rootfs"
        rootfs.mkdir(exist_ok=True)

        def rewrite(text: str) -> str:
            for source in sorted(mapping, key=len, reverse=True):
                text = text.replace(source, mapping[source])
            return private_paths(text, rootfs)

        command = [rewrite(part) for part in [*(container.command or []), *(container.args or [])]]
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        env = {**os.environ, **{k: rewrite(v) for k, v in pod_env.items()}}
        env["NAS_TEST_NODE_POD_DIR"] = str(pod_dir)
        workdir = rewrite(container.working_dir) if container.working_dir else str(pod_dir)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        log_file = pod_dir / "container.log"
        running = RunningPod(
            uid=uid,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            container=container.name,
            process=self._spawn(command, env, workdir, log_file),
            started_at=now(),
            termination_file=termination_file,
            log_file=log_file,
            policy=container.termination_message_policy or "File",
            restart_policy=pod.spec.restart_policy or "Always",
            spec=(command, env, workdir),
        )
        with self.lock:
            self.pods[uid] = running
        log.info("started %s/%s pid %s: %s", running.namespace, running.name, running.process.pid, command)
        self._patch(
            running.namespace,
            running.name,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": running.started_at,
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": running.started_at},
                    {"type": "Ready", "status": "True", "lastTransitionTime": running.started_at},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": running.started_at},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": running.started_at},
                ],
                "containerStatuses": [self._container_status(running, {"running": {"startedAt": running.started_at}})],
            },
        )

    def _pull_forever(self, pod: Any, container: Any) -> None:
        """The fake registry: ErrImagePull now, ImagePullBackOff from the next resync on; the pod never runs."""
        pulling = PullingPod(
            pod.metadata.namespace, pod.metadata.name, container.name, container.image, time.monotonic()
        )
        with self.lock:
            self.pulling[pod.metadata.uid] = pulling
        log.info(
            "%s/%s: image %s cannot be pulled (test node: unreachable registry)",
            pulling.namespace,
            pulling.name,
            pulling.image,
        )
        self._waiting(
            pod,
            container,
            "ErrImagePull",
            f'failed to pull and unpack image "{container.image}": dial tcp: lookup registry.invalid: no such host '
            "(test node: registry.invalid/ stands in for a registry that cannot be reached)",
        )

    def advance_pulls(self) -> None:
        """After the first failed pull a kubelet backs off: the reason becomes ImagePullBackOff."""
        with self.lock:
            due = [
                p
                for p in self.pulling.values()
                if not p.backing_off and time.monotonic() - p.since > PULL_BACKOFF_AFTER
            ]
            for pulling in due:
                pulling.backing_off = True
        for pulling in due:
            state = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{pulling.image}"'}}
            self._patch(
                pulling.namespace,
                pulling.name,
                {"containerStatuses": [self._waiting_status(pulling.container, pulling.image, state)]},
            )

    def _waiting(self, pod: Any, container: Any, reason: str, message: str) -> None:
        """A pod scheduled here whose container cannot start (image, config): Pending, with the container's reason."""
        at = now()
        state = {"waiting": {"reason": reason, "message": message}}
        self._patch(
            pod.metadata.namespace,
            pod.metadata.name,
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "startTime": at,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": at},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": at},
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "lastTransitionTime": at,
                    },
                ],
                "containerStatuses": [self._waiting_status(container.name, container.image or "", state)],
            },
        )

    @staticmethod
    def _waiting_status(container: str, image: str, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": container,
            "image": image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": state,
        }

    @staticmethod
    def _spawn(command: list[str], env: dict[str, str], workdir: str, log_file: Path) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as out:
            return subprocess.Popen(
                command,
                env=env,
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @staticmethod
    def _container_status(running: RunningPod, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": running.container,
            "image": "local-process",
            "imageID": "",
            "ready": "running" in state,
            "started": "running" in state,
            "restartCount": running.restarts,
            "state": state,
        }

    def reap(self) -> None:
        """Report processes that ended; restart OnFailure ones in place, as a kubelet would."""
        with self.lock:
            candidates = [p for p in self.pods.values() if not p.done and p.process.poll() is not None]
        for running in candidates:
            code = _exit_code(running.process.returncode)
            if code != 0 and running.restart_policy == "OnFailure":
                running.restarts += 1
                command, env, workdir = running.spec
                running.process = self._spawn(command, env, workdir, running.log_file)
                continue
            message = running.termination_file.read_text(errors="replace")[-4096:]
            if not message and code != 0 and running.policy == "FallbackToLogsOnError":
                message = "\n".join(running.log_file.read_text(errors="replace").splitlines()[-80:])
            running.done = True
            reason = "Completed" if code == 0 else "Error"
            self._finish_status(None, running.container, running.started_at, code, reason, message, running)

    def _finish_status(
        self,
        pod: Any,
        container: str,
        started_at: str,
        code: int,
        reason: str,
        message: str,
        running: RunningPod | None = None,
    ) -> None:
        namespace = running.namespace if running else pod.metadata.namespace
        name = running.name if running else pod.metadata.name
        terminated = {
            "exitCode": code,
            "reason": reason,
            "message": message,
            "startedAt": started_at,
            "finishedAt": now(),
        }
        status_entry = {
            "name": container,
            "image": "local-process",
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": running.restarts if running else 0,
            "state": {"terminated": terminated},
        }
        log.info("%s/%s ended: exit %s (%s)", namespace, name, code, reason)
        self._patch(
            namespace,
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": now(),
                    },
                ],
                "containerStatuses": [status_entry],
            },
        )

    def _patch(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", namespace, name, exc)

    def _terminate(self, pod: Any) -> None:
        """A deleted (or evicted) pod: kill its process, report the terminal phase, then remove it, as a kubelet.

        Reporting Failed before the removal, with the conditions the API server set (DisruptionTarget for an
        eviction), is what lets the Job controller apply a podFailurePolicy to the pod.
        """
        uid = pod.metadata.uid
        with self.lock:
            running = self.pods.pop(uid, None)
            pulling = self.pulling.pop(uid, None)
            first = uid not in self.terminated
            self.terminated.add(uid)
        if running is not None and not running.done:
            if running.process.poll() is None:
                log.info("killing %s/%s (pod deleted)", running.namespace, running.name)
                _kill_group(running.process)
            running.done = True
            code = _exit_code(running.process.returncode if running.process.returncode is not None else -9)
            message = running.termination_file.read_text(errors="replace")[-4096:]
            reason = "Completed" if code == 0 else "Error"
            self._finish_status(None, running.container, running.started_at, code, reason, message, running)
        elif first and running is None and pod.status.phase not in ("Succeeded", "Failed"):
            # Never started (waiting for an image, say): a kubelet marks a deleted pod Failed all the same.
            container = pulling.container if pulling else pod.spec.containers[0].name
            image = pulling.image if pulling else (pod.spec.containers[0].image or "")
            state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "deleted before it started",
                    "startedAt": None,
                    "finishedAt": now(),
                }
            }
            self._patch(
                pod.metadata.namespace,
                pod.metadata.name,
                {"phase": "Failed", "containerStatuses": [self._waiting_status(container, image, state)]},
            )
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("delete %s: %s", pod.metadata.name, exc)
        shutil.rmtree(self.root / "pods" / uid, ignore_errors=True)

    def forget_missing(self, known_before: set[str], live_uids: set[str]) -> None:
        """Pods removed without a deletion we saw (a watch gap): kill what they left running.

        Only pods known before the list was taken count: one the watch started since is not in that list.
        """
        with self.lock:
            gone = [uid for uid in self.pods if uid in known_before and uid not in live_uids]
            removed = [self.pods.pop(uid) for uid in gone]
        for running in removed:
            if running.process.poll() is None:
                _kill_group(running.process)

    # ----------------------------------------------------------------- loops

    def resync_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.lock:
                    known_before = set(self.pods)
                pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
                for pod in pods:
                    self.sync(pod)
                self.forget_missing(known_before, {p.metadata.uid for p in pods})
                self.reap()
                self.advance_pulls()
                self.untaint()
            except Exception:
                log.exception("resync failed")
            self.stopping.wait(0.5)

    def watch_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                    timeout_seconds=60,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    self.sync(event["object"])
            except Exception:
                log.exception("watch failed; retrying")
                time.sleep(0.5)

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            running = list(self.pods.values())
        for pod in running:
            if pod.process.poll() is None:
                _kill_group(pod.process)


def _exit_code(returncode: int) -> int:
    """A process's exit code as a container runtime reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--root", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(api, args.node, args.root)
    agent.register()
    threading.Thread(target=agent.watch_forever, daemon=True).start()
    threading.Thread(target=agent.resync_forever, daemon=True).start()

    def stop(signum: int, frame: object) -> None:
        agent.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.stopping.wait()
    agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
