"""The test control plane is a real Kubernetes: versions, CRD schemas, Jobs run by the node agent, RBAC."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.k8s.cluster import NODE_NAME, ControlPlane, versions

from .conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.cluster


def _job(name: str, script: str, volumes: list[dict] | None = None, mounts: list[dict] | None = None) -> str:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11",
                            "command": ["python", "-c", script],
                            "volumeMounts": mounts or [],
                        }
                    ],
                    "volumes": volumes or [],
                }
            },
        },
    }
    return yaml.safe_dump(job)


def test_server_reports_the_pinned_version(cluster: ControlPlane) -> None:
    reported = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = versions()["KUBERNETES_VERSION"]
    assert reported["serverVersion"]["gitVersion"] == pinned
    assert reported["clientVersion"]["gitVersion"] == pinned
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [NODE_NAME]


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.nas.operator.dev}
spec:
  group: test.nas.operator.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"""


def test_a_structural_crd_is_enforced_by_the_api_server(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.wait_established("widgets.test.nas.operator.dev")
    good = "apiVersion: test.nas.operator.dev/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {size: 3}\n"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=good)
    bad = good.replace("name: ok", "name: bad").replace("size: 3", "size: 0")
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in refused.stderr


def test_the_nasexperiment_crd_is_accepted_and_validates(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "nas.operator.dev_nasexperiments.yaml"))
    cluster.wait_established("nasexperiments.nas.operator.dev")
    for example in sorted(EXAMPLES.glob("*.yaml")):
        cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(example))
    document = yaml.safe_load((EXAMPLES / "digits-mlp.yaml").read_text())
    document["spec"]["parameters"][0]["lower"] = 500  # lower >= upper: a CEL rule of the CRD
    refused = cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", input=yaml.safe_dump(document), check=False
    )
    assert refused.returncode != 0 and "lower must be less than upper" in refused.stderr


def _pv_and_claim(cluster: ControlPlane, namespace: str, host_dir: Path, claim_name: str = "shared") -> None:
    """A ReadWriteMany claim bound to a hostPath volume: several claims on one `host_dir` share one "NFS export"."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pv-{namespace}-{claim_name}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "hostPath": {"path": str(host_dir)},
            "claimRef": {"namespace": namespace, "name": claim_name},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, claim]))
    cluster.kubectl(
        "wait", "-n", namespace, "--for=jsonpath={.status.phase}=Bound", f"pvc/{claim_name}", "--timeout=60s"
    )


def test_a_job_writes_into_its_claim_and_completes(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    _pv_and_claim(cluster, namespace, tmp_path)
    script = "import pathlib; p = pathlib.Path('/shared/run/out.txt'); p.parent.mkdir(); p.write_text('hello')"
    job = _job(
        "writer",
        script,
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}],
        mounts=[{"name": "data", "mountPath": "/shared"}],
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job)
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/writer", "--timeout=90s")
    assert (tmp_path / "run" / "out.txt").read_text() == "hello"  # the claim's volume, a real shared directory


def test_a_failing_job_ends_failed_with_the_exit_code_on_the_pod(cluster: ControlPlane, namespace: str) -> None:
    script = "import sys; open('/dev/termination-log', 'w').write('bad input'); sys.exit(3)"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_job("fails", script))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "job/fails", "--timeout=90s")
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "job-name=fails", "-o", "json").stdout)
    terminated = pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "bad input")
    assert pods["items"][0]["status"]["phase"] == "Failed"


def test_deleting_a_running_job_stops_its_process(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    script = "import os, time; open('/out/pid', 'w').write(str(os.getpid())); time.sleep(300)"
    job = _job(
        "sleeper",
        script,
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path)}}],
        mounts=[{"name": "out", "mountPath": "/out"}],
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job)
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 90
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, cluster.logs("node-agent")
        time.sleep(0.2)
    pid = int(pid_file.read_text())
    assert Path(f"/proc/{pid}").exists()
    cluster.kubectl("delete", "-n", namespace, "job/sleeper", "--cascade=foreground", "--timeout=60s")
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the trial process outlived its Job"
        time.sleep(0.2)
    assert cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_rbac_refuses_a_service_account_without_rights(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kubeconfig = cluster.kubeconfig_for_token(cluster.token_for(namespace, "nobody"), tmp_path / "nobody.kubeconfig")
    refused = cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr and "403" not in refused.stdout
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    still_refused = cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert "Forbidden" in still_refused.stderr


def test_the_node_agent_expands_sub_path_expr_and_keeps_writes_outside_mounts_in_the_pod(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _pv_and_claim(cluster, namespace, tmp_path)
    private = Path(f"/nas-private-{namespace}")  # a top-level directory this machine does not have
    script = (
        "import os, pathlib; pathlib.Path('/out/f').write_text(os.environ['POD']); "
        f"p = pathlib.Path('{private}/g'); p.parent.mkdir(parents=True); p.write_text('mine')"
    )
    job = yaml.safe_load(
        _job(
            "subpath",
            script,
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}],
            mounts=[{"name": "data", "mountPath": "/out", "subPathExpr": "runs/$(POD)"}],
        )
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/subpath", "--timeout=90s")
    pod = cluster.kubectl("get", "pods", "-n", namespace, "-l", "job-name=subpath", "-o", "name").stdout.strip()
    pod_name = pod.removeprefix("pod/")
    assert (tmp_path / "runs" / pod_name / "f").read_text() == pod_name  # the pod's own directory of the claim
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert not private.exists()  # written into the pod's own (fake) root filesystem, not this machine's


def test_an_image_from_the_unreachable_registry_waits_in_image_pull_back_off(
    cluster: ControlPlane, namespace: str
) -> None:
    job = yaml.safe_load(_job("unpullable", "print('never runs')"))
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.invalid/nothing:1"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    reasons: list[str] = []
    deadline = time.monotonic() + 60
    while "ImagePullBackOff" not in reasons:
        assert time.monotonic() < deadline, (reasons, cluster.logs("node-agent"))
        result = cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "job-name=unpullable",
            "-o", "jsonpath={.items[0].status.containerStatuses[0].state.waiting.reason}", check=False,
        )  # fmt: skip
        if result.stdout.strip() and (not reasons or reasons[-1] != result.stdout.strip()):
            reasons.append(result.stdout.strip())
        time.sleep(0.2)
    assert set(reasons) <= {"ErrImagePull", "ImagePullBackOff"}, reasons  # ErrImagePull lasts ~1 s: may be missed
    phase = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "job-name=unpullable", "-o", "jsonpath={.items[0].status.phase}"
    )
    assert phase.stdout == "Pending"
