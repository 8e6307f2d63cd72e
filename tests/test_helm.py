"""The Helm chart on the real test cluster: lint, schema, server-side validation, and an install
whose ServiceAccount runs a whole experiment (proving the chart's RBAC is enough and no more).

The test node cannot run the operator image, so the chart is installed with `replicas: 0` and
the operator runs as a local process with the image's entrypoint, the installed Deployment's
arguments and environment, and a token of the chart's ServiceAccount (never the admin's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas_operator.cluster.leader import LeaseConfig
from nas_operator.resource.policy import TrialPolicy
from tests.k8s.cluster import ControlPlane, ensure_binaries, servicemonitor_crd

from .conftest import ROOT
from .test_cluster import _pv_and_claim
from .test_images import DOCKERFILES, VENV_BIN, entrypoint
from .test_operator import CRD, OperatorProcess, _small_experiment, _wait_phase
from .test_telemetry import promtool_problems

pytestmark = pytest.mark.cluster
CHART = ROOT / "charts" / "nas-operator"
RELEASE = "nas-operator"


def helm(
    *args: str, tmp_path: Path, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(ensure_binaries() / "helm"), *args], capture_output=True, text=True, env=env, timeout=180
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def custom_values(tmp_path: Path, namespaces: list[str], **extra: Any) -> Path:
    values = {
        "health": {"port": 9443},
        "image": {"repository": "registry.example.com/nas/operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "watch": {"namespaces": namespaces},
        "serviceAccount": {"annotations": {"example.com/role": "nas"}},
        "operator": {
            "stepSeconds": 5,
            "maxWorkers": 4,
            "logLevel": "debug",
            **{"fitWorkers": 3, "resyncSeconds": 30, "idleEvictSeconds": 120, "restoreConcurrency": 4},
            **{"apiQps": 50, "apiBurst": 100},
        },
        "replicas": 2,
        "leaderElection": {
            **{"enabled": True, "leaseName": "nas-leader", "leaseSeconds": 20},
            **{"renewDeadlineSeconds": 12.5, "retrySeconds": 1},
        },
        "metricsVolume": {"claimName": "shared"},
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}},
        "grafanaDashboard": {"namespace": namespaces[0]},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
        **extra,
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    output = helm("template", RELEASE, str(CHART), *args, tmp_path=tmp_path).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def test_the_chart_crd_is_the_generated_one() -> None:
    assert (CHART / "crds" / CRD.name).read_text() == CRD.read_text(), "run: nasctl crd > charts/nas-operator/crds/..."


def test_helm_lint_passes_with_default_and_custom_values(tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART), tmp_path=tmp_path)
    helm("lint", "--strict", str(CHART), "-f", str(custom_values(tmp_path, ["team-a", "team-b"])), tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("replicas=2,leaderElection.enabled=false", "replicas"),
        ("replicas=11", "replicas"),
        ("leaderElection.leaseSeconds=1.5", "leaseSeconds"),
        ("leaderElection.retrySeconds=0", "retrySeconds"),
        ("leaderElection.leaseName=Not_A_Name", "leaseName"),
        ("operator.fitWorkers=some", "fitWorkers"),
        ("operator.fitWorkers=0", "fitWorkers"),
        ("operator.resyncSeconds=0", "resyncSeconds"),
        ("operator.idleEvictSeconds=-1", "idleEvictSeconds"),
        ("operator.restoreConcurrency=0", "restoreConcurrency"),
        ("operator.apiQps=0", "apiQps"),
        ("operator.apiBurst=0.5", "apiBurst"),
        ("operator.logLevel=loud", "logLevel"),
        ("watch.namespaces[0]=Not_A_Namespace", "namespaces"),
        ("metrics.port=0", "port"),
        ("unknownKey=1", "unknownKey"),
        ("trialPolicy.mountTypes[0]=hostPath", "mountTypes"),
        ("trialPolicy.serviceAccounts[0]=Not_An_Account", "serviceAccounts"),
        ("trialPolicy.pendingTimeout=soon", "pendingTimeout"),
        ("trialPolicy.runAsNonRoot=maybe", "runAsNonRoot"),
        ("operator.apiTimeoutSeconds=0", "apiTimeoutSeconds"),
    ],
)
def test_the_values_schema_refuses_bad_values_and_names_them(tmp_path: Path, flag: str, field: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--set", flag, tmp_path=tmp_path, check=False)
    assert result.returncode != 0 and field in result.stderr, result.stderr


def test_default_render_is_cluster_wide_with_probes_and_a_locked_down_pod(tmp_path: Path) -> None:
    documents = render(tmp_path)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        [
            *("ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding"),
            *("Role", "RoleBinding"),  # the leader-election Lease
            *("Service", "Deployment", "ConfigMap"),
        ]
    )
    (deployment,) = by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/nas-operator/operator:0.1.0"  # the chart's appVersion
    assert "--all-namespaces" in container["args"] and "--standalone" in container["args"]
    # leader election is on: the new pod stands by until the old one releases the Lease
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    # the operator's own /healthz on the metrics port, which a standby answers too (Kopf runs on the leader only)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert {"name": "http-metrics", "containerPort": 8080} in container["ports"]
    health = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://0.0.0.0:{health}/healthz" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "limits" in container["resources"] and "requests" in container["resources"]
    (dashboard,) = by_kind(documents, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["nas-operator.json"])["uid"] == "nas-operator"
    assert not by_kind(documents, "ServiceMonitor")
    assert not by_kind(documents, "PodDisruptionBudget")  # one replica: nothing to keep available


def _env(documents: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = by_kind(documents, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def test_the_trial_policy_values_reach_the_operator_as_its_environment(tmp_path: Path) -> None:
    """The chart's defaults are the operator's defaults, and custom values arrive as the policy they say."""
    defaults = _env(render(tmp_path))
    assert TrialPolicy.from_env(defaults) == TrialPolicy.from_values(
        yaml.safe_load((CHART / "values.yaml").read_text())
    )
    assert TrialPolicy.from_env(defaults) == TrialPolicy(pending_timeout_seconds=300)
    assert (defaults["NAS_API_TIMEOUT"], defaults["NAS_MAX_WORKERS"]) == ("30", "8")
    policy = {
        "serviceAccounts": ["default", "trainer"],
        "mountTypes": [],
        "runAsNonRoot": False,
        "pendingTimeout": "90s",
    }
    values = custom_values(tmp_path, ["team-a"], trialPolicy=policy)
    custom = _env(render(tmp_path, "-f", str(values)))
    expected = TrialPolicy(("default", "trainer"), (), run_as_non_root=False, pending_timeout_seconds=90)
    assert TrialPolicy.from_env(custom) == expected == TrialPolicy.from_values(yaml.safe_load(values.read_text()))
    # ... and the operator module reads them: the step executor's size, the API timeout and the policy.
    probe = (
        "from nas_operator.cluster import handlers as h; "
        "print(h.STEPS._max_workers, h.API_TIMEOUT, h.POLICY == TrialPolicy(('default', 'trainer'), (), "
        "run_as_non_root=False, pending_timeout_seconds=90))"
    )
    probe = "from nas_operator.resource.policy import TrialPolicy; " + probe
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", probe],
        env={**os.environ, **custom, "NAS_API_TIMEOUT": "12"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [custom["NAS_MAX_WORKERS"], "12.0", "True"]


def _downward(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (deployment,) = by_kind(documents, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["valueFrom"] for item in container["env"] if "valueFrom" in item}


def test_the_operator_settings_reach_the_operator_as_its_environment(tmp_path: Path) -> None:
    names = ("NAS_FIT_WORKERS", "NAS_RESYNC_SECONDS", "NAS_IDLE_EVICT_SECONDS")
    names += ("NAS_RESTORE_CONCURRENCY", "NAS_API_QPS", "NAS_API_BURST", "NAS_STEP_SECONDS", "NAS_MAX_WORKERS")
    defaults = render(tmp_path)
    assert [_env(defaults)[name] for name in names] == ["", "60", "600", "2", "50", "100", "2", "8"]
    # an empty fitWorkers means the CPU limit, which the pod always gets, in whole CPUs
    cpu = {"resourceFieldRef": {"containerName": "operator", "resource": "limits.cpu", "divisor": "1"}}
    assert _downward(defaults)["NAS_CPU_LIMIT"] == cpu
    custom = _env(render(tmp_path, "-f", str(custom_values(tmp_path, ["team-a"]))))
    assert [custom[name] for name in names] == ["3", "30", "120", "4", "50", "100", "5", "4"]


def test_leader_election_values_reach_the_operator_and_its_rbac(tmp_path: Path) -> None:
    """The chart's defaults are the elector's defaults, and the downward API fills in where and who."""
    documents = render(tmp_path, "--namespace", "ops")
    env = _env(documents)
    downward = _downward(documents)
    assert downward["NAS_LEADER_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert downward["NAS_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pod = {**env, "NAS_LEADER_LEASE_NAMESPACE": "ops", "NAS_POD_NAME": "nas-operator-5f7c9-abcde"}
    expected = LeaseConfig(namespace="ops", identity="nas-operator-5f7c9-abcde")  # the elector's defaults
    assert LeaseConfig.from_env(pod) == expected and expected.name == RELEASE  # the release's full name

    (role,) = by_kind(documents, "Role")
    (binding,) = by_kind(documents, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "ops"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": "ops"}]
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [RELEASE],
            "verbs": ["get", "update"],
        },
    ]

    values = custom_values(tmp_path, ["team-a"])
    custom = render(tmp_path, "--namespace", "ops", "-f", str(values))
    pod = {**_env(custom), "NAS_LEADER_LEASE_NAMESPACE": "ops", "NAS_POD_NAME": "p"}
    assert LeaseConfig.from_env(pod) == LeaseConfig(
        name="nas-leader", namespace="ops", identity="p", lease_seconds=20, renew_deadline_seconds=12.5, retry_seconds=1
    )
    (lease_role,) = [role for role in by_kind(custom, "Role") if role["metadata"]["namespace"] == "ops"]
    assert lease_role["rules"][1]["resourceNames"] == ["nas-leader"]
    # two replicas: a PodDisruptionBudget keeps one (the leader or its standby) through a drain
    (budget,) = by_kind(custom, "PodDisruptionBudget")
    (deployment,) = by_kind(custom, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    # off: no Lease, no RBAC for one, no standby, and Recreate so that two operators never overlap
    off = render(tmp_path, "--namespace", "ops", "--set", "leaderElection.enabled=false")
    assert not by_kind(off, "Role") and not by_kind(off, "PodDisruptionBudget")
    (deployment,) = by_kind(off, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert LeaseConfig.from_env(_env(off)) is None and "NAS_POD_NAME" not in _downward(off)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["replicas=2", "leaderElection.enabled=false"], "replicas > 1 needs leaderElection.enabled"),
        (
            ["leaderElection.renewDeadlineSeconds=15"],
            "renewDeadlineSeconds must be less than leaderElection.leaseSeconds",
        ),
        (["leaderElection.retrySeconds=10"], "retrySeconds must be less than leaderElection.renewDeadlineSeconds"),
    ],
)
def test_the_chart_refuses_leader_election_settings_that_could_overlap_two_leaders(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    """What the schema cannot say (one value against another) the templates refuse, schema or not."""
    for schema in ([], ["--skip-schema-validation"]):
        sets = [arg for flag in flags for arg in ("--set", flag)]
        result = helm("template", RELEASE, str(CHART), *schema, *sets, tmp_path=tmp_path, check=False)
        assert result.returncode != 0, result.stdout[-2000:]
        if schema or "replicas" not in message:
            assert message in result.stderr, result.stderr
        else:
            assert "replicas" in result.stderr, result.stderr  # the schema says it first


def test_custom_render_limits_rbac_to_the_listed_namespaces(tmp_path: Path) -> None:
    documents = render(tmp_path, "-f", str(custom_values(tmp_path, ["team-a", "team-b"])))
    roles = [role for role in by_kind(documents, "Role") if role["metadata"]["name"] == RELEASE]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    (lease_role,) = [role for role in by_kind(documents, "Role") if role["metadata"]["name"] != RELEASE]
    assert lease_role["metadata"]["namespace"] == "default"  # the release's, not a watched one
    cluster_rules = [rule for role in by_kind(documents, "ClusterRole") for rule in role["rules"]]
    assert all(rule["verbs"] == ["list", "watch"] for rule in cluster_rules), cluster_rules  # read-only discovery
    assert {resource for rule in cluster_rules for resource in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    (deployment,) = by_kind(documents, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in container["args"] and "--all-namespaces" not in container["args"]
    assert _env(documents)["NAS_WATCH_NAMESPACES"] == "team-a,team-b"  # the operator's own watches follow Kopf's
    assert _env(render(tmp_path))["NAS_WATCH_NAMESPACES"] == ""  # every namespace
    assert "--debug" in container["args"] and "--liveness=http://0.0.0.0:9443/healthz" in container["args"]
    assert {"name": "health", "containerPort": 9443} in container["ports"]
    assert container["image"] == "registry.example.com/nas/operator:0.1.0-rc1"
    assert {"name": "nas-logs", "mountPath": "/nas-logs", "readOnly": True} in container["volumeMounts"]
    (monitor,) = by_kind(documents, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def _server_side_dry_run(cluster: ControlPlane, documents: list[dict[str, Any]]) -> None:
    """Every namespaced object carries its namespace (helm template --namespace), so none is given here."""
    result = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-",
        input=yaml.safe_dump_all(documents), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"serverside-applied \(server dry run\)", result.stdout)) == len(documents), result.stdout


def test_rendered_manifests_pass_the_api_servers_validation(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(servicemonitor_crd()))
    cluster.wait_established("servicemonitors.monitoring.coreos.com")
    second = f"{namespace}-b"
    cluster.kubectl("create", "namespace", second)
    try:
        _server_side_dry_run(cluster, render(tmp_path, "--namespace", namespace))
        values = custom_values(tmp_path, [namespace, second])
        _server_side_dry_run(cluster, render(tmp_path, "--namespace", namespace, "-f", str(values)))
        # and the API server does check: a ServiceMonitor with a bad field is refused
        broken = render(tmp_path, "--namespace", namespace, "-f", str(values))
        (monitor,) = by_kind(broken, "ServiceMonitor")
        monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
        refused = cluster.kubectl(
            "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-",
            input=yaml.safe_dump(monitor), check=False,
        )  # fmt: skip
        assert refused.returncode != 0 and "scheme" in refused.stderr, refused.stderr
    finally:
        cluster.kubectl("delete", "namespace", second, "--wait=false", check=False)


def test_every_example_applies_server_side(cluster: ControlPlane, namespace: str) -> None:
    """GitOps tools apply manifests server-side: the examples must pass the CRD's schema and CEL rules."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("nasexperiments.nas.operator.dev")
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for example in examples:
        result = cluster.kubectl(
            "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(example), check=False
        )
        assert result.returncode == 0 and "serverside-applied" in result.stdout, (example.name, result.stderr)


def _sample(exposition: str, name: str, **labels: str) -> float | None:
    for line in exposition.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _operator_command(deployment: dict[str, Any], pod_name: str) -> tuple[list[str], dict[str, str]]:
    """What the pod would run: the image's entrypoint, the Deployment's args (minus the liveness address: the
    test process gets a free loopback port) and env, with the downward API's values filled in as the kubelet
    would for a pod of that name in the Deployment's namespace."""
    image = entrypoint(DOCKERFILES["operator"], with_cmd=False)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [arg for arg in container["args"] if not arg.startswith("--liveness=")]
    assert len(args) == len(container["args"]) - 1
    fields = {"metadata.namespace": deployment["metadata"]["namespace"], "metadata.name": pod_name}
    env = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in source:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif source.get("resourceFieldRef", {}).get("resource") == "limits.cpu":
            env[item["name"]] = str(os.cpu_count() or 1)  # no CPU limit: the node's CPUs
    return [str(VENV_BIN / "kopf"), *image[1:], *args], env


def test_the_installed_chart_runs_an_experiment_under_its_own_service_account(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    operator_namespace = f"{namespace}-op"
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    logs = tmp_path / "logs"
    logs.mkdir()
    _pv_and_claim(cluster, namespace, logs)
    helm(
        "install", RELEASE, str(CHART), "--namespace", operator_namespace, "--create-namespace",
        "--set", "replicas=0", "--set", f"watch.namespaces={{{namespace}}}", "--wait", "--timeout", "60s",
        tmp_path=tmp_path, kubeconfig=cluster.kubeconfig,
    )  # fmt: skip
    try:
        deployment = json.loads(
            cluster.kubectl("get", "deployment", RELEASE, "-n", operator_namespace, "-o", "json").stdout
        )
        command, chart_env = _operator_command(deployment, f"{RELEASE}-7d9c5-x2x4q")
        assert f"--namespace={namespace}" in command and "--standalone" in command
        assert chart_env["NAS_LEADER_LEASE_NAMESPACE"] == operator_namespace
        token = cluster.token_for(operator_namespace, RELEASE)
        service_account = cluster.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")
        operator = OperatorProcess(
            cluster, [namespace], logs, tmp_path / "operator.log", command=command, kubeconfig=service_account
        )
        operator.env = {**chart_env, **operator.env, "NAS_STEP_SECONDS": "1"}
        assert operator.env["NAS_METRICS_PORT"] != chart_env["NAS_METRICS_PORT"]  # a free loopback port here
        operator.start()
        try:
            _run_and_scrape(cluster, namespace, operator, tmp_path)
        finally:
            operator.stop()
        log = operator.log_file.read_text()
        assert "Forbidden" not in log and "status=403" not in log, log[-4000:]

        # ... and no more than it needs: calls outside its rules are refused.
        outside = cluster.kubectl("get", "secrets", "-n", "kube-system", kubeconfig=service_account, check=False)
        assert outside.returncode != 0 and "Forbidden" in outside.stderr, outside.stderr
        for verb, resource, where in (
            ("create", "jobs", operator_namespace),
            ("create", "jobs", "default"),
            ("list", "secrets", namespace),
            ("delete", "pods", namespace),
            ("delete", "nasexperiments.nas.operator.dev", namespace),
            ("create", "nasexperiments.nas.operator.dev", namespace),
            ("create", "customresourcedefinitions", "default"),
            ("create", "leases.coordination.k8s.io", namespace),  # its Lease is in its own namespace only
            ("delete", "leases.coordination.k8s.io", operator_namespace),
            ("list", "leases.coordination.k8s.io", operator_namespace),
            ("update", f"leases.coordination.k8s.io/{RELEASE}-other", operator_namespace),
        ):
            answer = cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", where, kubeconfig=service_account, check=False
            )
            assert answer.stdout.strip() == "no", (verb, resource, where, answer.stdout)
        assert (
            cluster.kubectl(
                "auth", "can-i", "get", "events", "-n", namespace, kubeconfig=service_account, check=False
            ).stdout.strip()
            == "no"
        )
        for verb, resource in (
            ("create", "jobs"),
            ("patch", "nasexperiments.nas.operator.dev/status"),
            ("list", "events"),  # a Job's FailedCreate Events say why a stuck trial has no pod
        ):
            answer = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, kubeconfig=service_account)
            assert answer.stdout.strip() == "yes", (verb, resource)
        for verb, resource in (  # leader election, in the release namespace
            ("create", "leases.coordination.k8s.io"),
            ("get", f"leases.coordination.k8s.io/{RELEASE}"),
            ("update", f"leases.coordination.k8s.io/{RELEASE}"),
        ):
            answer = cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", operator_namespace, kubeconfig=service_account
            )
            assert answer.stdout.strip() == "yes", (verb, resource)
    finally:
        helm("uninstall", RELEASE, "--namespace", operator_namespace, tmp_path=tmp_path, kubeconfig=cluster.kubeconfig)
        cluster.kubectl("delete", "namespace", operator_namespace, "--wait=false", check=False)
    leftovers = cluster.kubectl("get", "clusterroles,clusterrolebindings", "-o", "name").stdout
    assert RELEASE not in leftovers


def _run_and_scrape(cluster: ControlPlane, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    while True:  # Kopf's liveness endpoint, which the chart's probes call
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as response:
                assert response.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, operator.log_file.read_text()[-3000:]
            time.sleep(0.5)

    doc = _small_experiment("charted")
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    succeeded_seen: list[float] = []
    running_seen = False
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        exposition = operator.scrape()
        succeeded_seen.append(_sample(exposition, "nas_trials", experiment="charted", state="succeeded") or 0)
        running_seen |= (_sample(exposition, "nas_experiments", phase="Running") or 0) == 1
        if (_sample(exposition, "nas_experiments", phase="Succeeded") or 0) == 1:
            break
        time.sleep(1)
    status = _wait_phase(cluster, namespace, "charted", "Succeeded", operator.log_file, timeout=30)
    assert status["trials"]["succeeded"] == 3

    exposition = operator.scrape()
    assert running_seen and succeeded_seen[0] < 3 and succeeded_seen[-1] == 3, succeeded_seen
    assert succeeded_seen == sorted(succeeded_seen)  # the counts only move forward
    labels = {"namespace": namespace, "experiment": "charted"}
    assert _sample(exposition, "nas_hypervolume", **labels) == pytest.approx(status["hypervolume"])
    assert _sample(exposition, "nas_pareto_front_size", **labels) == status["paretoSize"]
    assert (_sample(exposition, "nas_candidate_generation_seconds_count", **labels) or 0) >= 1
    assert _sample(exposition, "nas_trial_duration_seconds_count", **labels, outcome="succeeded") == 3
    # the gzip trial table of 3 trials (about 1 KB; the engine's part is a few hundred bytes since #12)
    assert (_sample(exposition, "nas_state_bytes", **labels) or 0) > 300
    assert (_sample(exposition, "nas_reconcile_duration_seconds_count", **labels) or 0) > 3
    assert _sample(exposition, "nas_reconcile_errors_total", **labels) in (None, 0.0)
    assert promtool_problems(exposition) == ""
    (tmp_path / "metrics.txt").write_text(exposition)

    # GitOps: the operator wrote status and its own metadata, never spec; the manifest applies again as a no-op.
    manifest = yaml.safe_dump(doc)
    live = json.loads(
        cluster.kubectl("get", "nasx", "charted", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    )
    assert live["metadata"]["generation"] == 1
    for entry in live["metadata"]["managedFields"]:
        owns_spec = "f:spec" in entry.get("fieldsV1", {})
        assert not owns_spec or entry["manager"] == "kubectl", entry["manager"]
    diff = cluster.kubectl("diff", "--server-side", "-n", namespace, "-f", "-", input=manifest, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    again = json.loads(cluster.kubectl("get", "nasx", "charted", "-n", namespace, "-o", "json").stdout)
    assert again["metadata"]["generation"] == 1 and again["status"]["phase"] == "Succeeded"

    cluster.kubectl("delete", "nasx", "charted", "-n", namespace, "--timeout=60s")
    deadline = time.monotonic() + 30
    while _sample(operator.scrape(), "nas_trials", experiment="charted", state="succeeded") is not None:
        assert time.monotonic() < deadline, "the deleted experiment's series stayed"
        time.sleep(0.5)


def test_helm_binary_reports_the_pinned_version(tmp_path: Path) -> None:
    from tests.k8s.cluster import versions

    assert shutil.which(str(ensure_binaries() / "helm"))
    assert versions()["HELM_VERSION"] in helm("version", "--short", tmp_path=tmp_path).stdout
