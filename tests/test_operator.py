"""The operator on the real control plane: NASExperiments reconciled by Kopf, trials as real Jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from nas_operator.resource.quantities import parse_quantity
from nas_operator.resource.spec_checks import load_spec
from nas_operator.search.pareto import pareto_indices
from nas_operator.storage.store import ConfigMapStore
from nas_operator.storage.store_sql import SQLStore
from tests.k8s.cluster import ControlPlane, free_port

from .conftest import EXAMPLES, ROOT, load_yaml, toy_doc
from .postgres import postgres_url  # noqa: F401  (fixture)
from .test_cluster import _pv_and_claim

pytestmark = pytest.mark.cluster
CRD = ROOT / "crds" / "nas.operator.dev_nasexperiments.yaml"


class OperatorProcess:
    """The operator as its image runs it (`kopf run -m nas_operator.cluster.handlers`), watching the given namespaces.

    Its Prometheus endpoint and Kopf's liveness endpoint listen on free loopback ports.
    """

    def __init__(
        self,
        cluster: ControlPlane,
        namespaces: list[str],
        logs: Path,
        log_file: Path,
        command: list[str] | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.command = (
            list(command)
            if command
            else [
                str(Path(sys.executable).parent / "kopf"),
                "run",
                "-m",
                "nas_operator.cluster.handlers",
                "--standalone",
                *[f"--namespace={namespace}" for namespace in namespaces],
            ]
        )
        self.command.append(f"--liveness=http://127.0.0.1:{self.health_port}/healthz")
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
            "NAS_METRICS_ROOT": str(logs),
            "NAS_STEP_SECONDS": "1",
            "NAS_METRICS_PORT": str(self.metrics_port),
            "NAS_METRICS_ADDRESS": "127.0.0.1",
        }
        self.log_file = log_file
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None

    def scrape(self, path: str = "/metrics", port: int | None = None) -> str:
        url = f"http://127.0.0.1:{port or self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, as when a node dies."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def operator_process(cluster: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.wait_established("nasexperiments.nas.operator.dev")
    logs = tmp_path / "logs"
    logs.mkdir()
    second = f"{namespace}-b"
    cluster.kubectl("create", "namespace", second)
    for ns in (namespace, second):
        # Every trial of these tests runs under the API server's own Pod Security admission at its strictest level,
        # and both namespaces' claims reach the one shared volume the operator reads.
        cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
        _pv_and_claim(cluster, ns, logs)
    process = OperatorProcess(cluster, [namespace, second], logs, tmp_path / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", second, "--wait=false", check=False)


@pytest.fixture
def operator(operator_process: OperatorProcess) -> Path:
    return operator_process.log_file


def _small_experiment(name: str) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / "digits-mlp.yaml")
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["budget"].update(maxTrials=3, parallelism=2)
    spec["algorithm"]["initialTrials"] = 2
    spec["objectives"][0]["threshold"] = 0.1
    spec["metrics"]["claimName"] = "shared"
    spec["trial"]["args"].append("--latency-repeats=20")
    for parameter in spec["parameters"]:
        if parameter["name"] == "epochs":
            parameter.update(lower=1, upper=2)
    return doc


def _get(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "nasx", name, "-n", namespace, "-o", "json").stdout)


def _wait_phase(cluster: ControlPlane, namespace: str, name: str, phase: str, log: Path, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _get(cluster, namespace, name).get("status", {})
        if status.get("phase") == phase:
            return status
        time.sleep(1)
    raise AssertionError(f"{name} not {phase}: {status}\noperator log:\n{log.read_text()[-4000:]}")


def _nasctl(cluster: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "nas_operator.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_an_experiment_runs_to_succeeded_through_real_jobs(
    cluster: ControlPlane, namespace: str, operator: Path, tmp_path: Path
) -> None:
    doc = _small_experiment("digits-small")
    spec_file = tmp_path / "digits-small.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    created = _nasctl(cluster, "apply", str(spec_file), "-n", namespace)
    assert created.returncode == 0 and "created" in created.stdout, created.stderr
    status = _wait_phase(cluster, namespace, "digits-small", "Succeeded", operator)
    assert status["reason"] == "BudgetExhausted"
    assert status["trials"]["total"] == 3 and status["trials"]["succeeded"] == 3
    assert status["paretoSize"] == len(status["paretoFront"]) >= 1 and status["hypervolume"] > 0

    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == ["digits-small-t0", "digits-small-t1", "digits-small-t2"]
    experiment_uid = _get(cluster, namespace, "digits-small")["metadata"]["uid"]
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == experiment_uid for j in jobs)

    # `nasctl render` printed, without a cluster, the Job the operator really created (the API server only adds
    # defaults: compare what the operator sets).
    rendered = _nasctl(cluster, "render", str(spec_file), "--trial", "0", "-n", namespace, "--uid", experiment_uid)
    assert rendered.returncode == 0, rendered.stderr
    expected = yaml.safe_load(rendered.stdout)
    actual = next(j for j in jobs if j["metadata"]["name"] == "digits-small-t0")
    for key in ("labels", "annotations", "ownerReferences"):
        assert actual["metadata"][key] == expected["metadata"][key], key
    assert actual["spec"]["podFailurePolicy"] == expected["spec"]["podFailurePolicy"]
    pod, want = actual["spec"]["template"]["spec"], expected["spec"]["template"]["spec"]
    assert pod["securityContext"] == want["securityContext"]
    assert pod.get("automountServiceAccountToken") == want.get("automountServiceAccountToken")
    assert [v["name"] for v in pod["volumes"]] == [v["name"] for v in want["volumes"]]
    container, want_container = pod["containers"][0], want["containers"][0]
    for key in ("command", "args", "env", "volumeMounts", "securityContext", "image"):
        assert container.get(key) == want_container.get(key), key

    def amounts(resources: dict[str, dict[str, str]]) -> dict[str, dict[str, Decimal]]:
        """The API server writes quantities canonically ("1000m" -> "1"): compare amounts."""
        return {kind: {k: parse_quantity(v) for k, v in values.items()} for kind, values in resources.items()}

    assert amounts(container["resources"]) == amounts(want_container["resources"])

    # The status front is the engine's: recompute it from the stored state.
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    stored = ConfigMapStore(core, namespace, "digits-small").load()
    assert stored is not None
    spec = load_spec(doc["spec"])
    expected = [stored.state.trials[i].name for i in pareto_indices(spec, stored.state.results())]
    assert [p["trial"] for p in status["paretoFront"]] == expected

    shown = _nasctl(cluster, "status", "digits-small", "-n", namespace)
    assert shown.returncode == 0 and "Succeeded BudgetExhausted" in shown.stdout and "trials 3/3" in shown.stdout
    front = _nasctl(cluster, "pareto", "digits-small", "-n", namespace, "--plot", str(tmp_path / "front.png"))
    assert front.returncode == 0 and "Pareto front of digits-small" in front.stdout
    assert (tmp_path / "front.png").stat().st_size > 10_000
    again = _nasctl(cluster, "apply", str(spec_file), "-n", namespace)
    assert again.returncode == 1 and "exists" in again.stderr

    table = cluster.kubectl("get", "nasx", "-n", namespace).stdout
    assert "Succeeded" in table.splitlines()[1] and "HYPERVOLUME" in table.splitlines()[0]
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector=involvedObject.name=digits-small"
    ).stdout
    assert "TrialLaunched" in events and "TrialSucceeded" in events and "BudgetExhausted" in events

    cluster.kubectl("delete", "nasx", "digits-small", "-n", namespace, "--timeout=60s")
    deadline = time.monotonic() + 60
    while cluster.kubectl(
        "get", "jobs,configmaps", "-n", namespace, "-l", "nas.operator.dev/experiment=digits-small", "-o", "name"
    ).stdout.strip():
        assert time.monotonic() < deadline, "jobs or state outlived the experiment"
        time.sleep(0.5)


def test_a_semantically_wrong_spec_fails_with_invalid_spec_and_the_field(
    cluster: ControlPlane, namespace: str, operator: Path
) -> None:
    doc = _small_experiment("bad-metric")
    doc["spec"]["outcomeConstraints"] = ["latency_ms <= 5"]  # passes the schema, names no metric
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    good = _termination_message_experiment("good-neighbour", 2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(good))
    status = _wait_phase(cluster, namespace, "bad-metric", "Failed", operator, timeout=120)
    assert status["reason"] == "InvalidSpec"
    assert 'spec.outcomeConstraints[0]: unknown metric "latency_ms"' in status["message"]
    # the operator keeps serving the other experiment
    assert _wait_phase(cluster, namespace, "good-neighbour", "Succeeded", operator)["trials"]["succeeded"] == 2
    jobs = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
    assert all(name.startswith("job.batch/good-neighbour-") for name in jobs)
    cluster.kubectl("delete", "nasx", "bad-metric", "-n", namespace, "--timeout=60s")  # no state: no hang


def test_sigkilled_operator_restarts_without_running_a_trial_twice_or_losing_one(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    doc = _small_experiment("restarts")
    doc["spec"]["budget"].update(maxTrials=5, parallelism=2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    def job_count() -> int:
        return len(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split())

    def succeeded() -> int:
        return int(_get(cluster, namespace, "restarts").get("status", {}).get("trials", {}).get("succeeded", 0))

    kill_points = [lambda: job_count() >= 1, lambda: succeeded() >= 1, lambda: job_count() >= 4]
    for reached in kill_points:
        deadline = time.monotonic() + 300
        while not reached():
            assert time.monotonic() < deadline, operator_process.log_file.read_text()[-4000:]
            time.sleep(0.2)
        operator_process.kill()
        time.sleep(1)
        operator_process.start()

    status = _wait_phase(cluster, namespace, "restarts", "Succeeded", operator_process.log_file)
    assert status["trials"]["total"] == 5 and status["trials"]["succeeded"] == 5
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"restarts-t{i}" for i in range(5)]
    for job in jobs:  # each trial ran in exactly one pod of one Job
        assert job["status"].get("succeeded") == 1 and not job["status"].get("failed")
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    stored = ConfigMapStore(core, namespace, "restarts").load()
    assert stored is not None and sorted(stored.state.trials) == [0, 1, 2, 3, 4]
    assert all(t.status == "succeeded" and t.metrics for t in stored.state.trials.values())


def test_a_bad_object_is_refused_by_the_api_server_itself(
    cluster: ControlPlane, namespace: str, operator: Path, tmp_path: Path
) -> None:
    doc = _small_experiment("refused")
    doc["spec"]["outcomeConstraints"] = ["nope <= 1"]
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(doc))
    checked = _nasctl(cluster, "apply", str(bad_file), "-n", namespace)  # nasctl checks before it sends
    assert checked.returncode == 1 and 'spec.outcomeConstraints[0]: unknown metric "nope"' in checked.stderr
    doc = _small_experiment("refused")
    doc["spec"]["objectives"][0]["goal"] = "up"  # the schema's enum
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert refused.returncode != 0
    assert 'spec.objectives[0].goal: Unsupported value: "up"' in refused.stderr
    doc = _small_experiment("refused")
    doc["spec"]["budget"]["parallelism"] = 10  # above maxTrials: a CEL rule
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert refused.returncode != 0 and "budget.parallelism must not exceed maxTrials" in refused.stderr
    immutable = _small_experiment("immutable")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(immutable))
    immutable["spec"]["objectives"][1]["threshold"] = 1
    changed = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(immutable), check=False)
    assert changed.returncode != 0 and "spec.objectives is immutable" in changed.stderr
    immutable["spec"]["objectives"][1]["threshold"] = 12000
    immutable["spec"]["budget"]["maxTrials"] = 4  # the budget may change
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(immutable))


def test_failing_trials_past_the_rate_end_the_experiment_failed(
    cluster: ControlPlane, namespace: str, operator: Path
) -> None:
    doc = _small_experiment("failing")
    doc["spec"]["budget"].update(maxTrials=6, parallelism=2, minFailedTrials=2, maxFailureRate=0.5)
    doc["spec"]["metrics"] = {"source": "terminationMessage"}
    doc["spec"]["trial"]["command"] = ["python", "-c"]
    doc["spec"]["trial"]["args"] = ["import sys; print('diverged at lr {learning_rate}'); sys.exit(1)"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    status = _wait_phase(cluster, namespace, "failing", "Failed", operator, timeout=240)
    assert status["reason"] == "FailureRateExceeded"
    assert status["trials"]["failed"] >= 2 and status["trials"]["total"] < 6
    events = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector=involvedObject.name=failing", "-o", "json"
        ).stdout
    )["items"]
    failures = [e["message"] for e in events if e["reason"] == "TrialFailed"]
    assert failures and all("exit code 1" in m and "diverged at lr" in m for m in failures), failures


def _termination_message_experiment(name: str, max_trials: int) -> dict[str, Any]:
    doc = _small_experiment(name)
    doc["spec"]["budget"].update(maxTrials=max_trials, parallelism=2)
    doc["spec"]["metrics"] = {"source": "terminationMessage"}
    return doc


def test_two_namespaces_with_the_same_experiment_on_one_volume_stay_apart(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    """Two teams apply the same example under the same name; both claims reach one volume; nothing is shared."""
    operator = operator_process.log_file
    second = f"{namespace}-b"
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", second, check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for ns, trials in ((namespace, 2), (second, 3)):
        doc = _small_experiment("twin")
        doc["spec"]["budget"].update(maxTrials=trials, parallelism=2)
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    first = _wait_phase(cluster, namespace, "twin", "Succeeded", operator)
    other = _wait_phase(cluster, second, "twin", "Succeeded", operator)
    assert (first["trials"]["succeeded"], other["trials"]["succeeded"]) == (2, 3)
    for ns, count in ((namespace, 2), (second, 3)):
        names = cluster.kubectl("get", "jobs", "-n", ns, "-o", "name").stdout.split()
        assert sorted(names) == [f"job.batch/twin-t{i}" for i in range(count)]
        uid = _get(cluster, ns, "twin")["metadata"]["uid"]
        experiment_dir = operator_process.logs / ns / f"twin-{uid[:8]}"
        # each trial wrote only under its own namespace/experiment-uid/trial/pod directory
        assert sorted(p.name for p in experiment_dir.iterdir()) == sorted(f"twin-t{i}" for i in range(count))
        for trial_dir in experiment_dir.iterdir():
            pods = list(trial_dir.iterdir())
            assert len(pods) == 1 and pods[0].name.startswith(f"{trial_dir.name}-"), pods
            assert any(pods[0].rglob("*tfevents*"))
    assert sorted(p.name for p in operator_process.logs.iterdir()) == sorted([namespace, second])


def test_suspend_then_resume_then_raise_the_budget(cluster: ControlPlane, namespace: str, operator: Path) -> None:
    doc = _termination_message_experiment("paused", 2)
    doc["spec"]["suspend"] = True
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    status = _wait_phase(cluster, namespace, "paused", "Stopped", operator, timeout=120)
    assert status["reason"] == "Suspended"
    assert cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.strip() == ""
    cluster.kubectl("patch", "nasx", "paused", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    status = _wait_phase(cluster, namespace, "paused", "Succeeded", operator)
    assert status["trials"]["total"] == 2
    cluster.kubectl(
        "patch", "nasx", "paused", "-n", namespace, "--type=merge", "-p", '{"spec": {"budget": {"maxTrials": 3}}}'
    )
    deadline = time.monotonic() + 300
    while (status := _get(cluster, namespace, "paused")["status"])["trials"]["total"] != 3 or status["phase"] != (
        "Succeeded"
    ):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    names = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(names) == [f"job.batch/paused-t{i}" for i in range(3)]


def test_sql_storage_keeps_the_state_in_postgresql_and_the_finalizer_removes_it(
    cluster: ControlPlane,
    namespace: str,
    operator: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    cluster.kubectl("create", "secret", "generic", "nas-db", "-n", namespace, f"--from-literal=url={postgres_url}")
    cluster.kubectl("label", "secret", "nas-db", "-n", namespace, "nas.operator.dev/state-store=true")  # the opt-in
    doc = _termination_message_experiment("in-sql", 2)
    doc["spec"]["storage"] = {"type": "sql", "secretRef": {"name": "nas-db", "key": "url"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    status = _wait_phase(cluster, namespace, "in-sql", "Succeeded", operator)
    assert status["trials"]["succeeded"] == 2
    stored = SQLStore(postgres_url, namespace, "in-sql").load()
    assert stored is not None and sorted(stored.state.trials) == [0, 1]
    assert cluster.kubectl("get", "configmap", "in-sql-nas-state", "-n", namespace, check=False).returncode != 0
    cluster.kubectl("delete", "nasx", "in-sql", "-n", namespace, "--timeout=60s")
    assert SQLStore(postgres_url, namespace, "in-sql").load() is None


def test_deleting_a_running_experiment_removes_its_jobs_and_state(
    cluster: ControlPlane, namespace: str, operator: Path
) -> None:
    doc = _termination_message_experiment("doomed", 4)
    doc["spec"]["trial"]["command"] = ["python", "-c"]
    doc["spec"]["trial"]["args"] = ["import time; time.sleep(300)"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 120
    while _get(cluster, namespace, "doomed").get("status", {}).get("trials", {}).get("running", 0) < 2:
        assert time.monotonic() < deadline, operator.read_text()[-3000:]
        time.sleep(0.5)
    cluster.kubectl("delete", "nasx", "doomed", "-n", namespace, "--timeout=90s")
    deadline = time.monotonic() + 90
    while (
        cluster.kubectl(
            "get", "jobs,pods,configmaps", "-n", namespace, "-l", "nas.operator.dev/experiment=doomed", "-o", "name"
        ).stdout.strip()
        or cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip()
    ):
        assert time.monotonic() < deadline, "Jobs, pods or state outlived the experiment"
        time.sleep(0.5)


def test_early_stopping_deletes_the_job_and_a_restart_keeps_the_decision(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    """Trials write real torch event files on the shared volume; the operator reads them while they run."""
    doc = toy_doc(maxTrials=8, parallelism=1)
    doc["metadata"]["name"] = "curves"
    spec = doc["spec"]
    spec["objectives"] = [
        {"metric": "acc", "goal": "maximize", "threshold": 0.3},
        {"metric": "params", "goal": "minimize", "threshold": 1200.0},
    ]
    spec["metrics"] = {
        "source": "tensorboard",
        "claimName": "shared",
        "definitions": [{"name": "acc", "reduce": "max"}, {"name": "params"}],
    }
    spec["earlyStopping"] = {"progression": "epoch", "minProgression": 2, "minReferenceTrials": 2}
    spec["parameters"] = [  # not x and y: kubectl's YAML reads a bare y as a boolean
        {"name": "quality", "type": "range", "lower": 0.0, "upper": 1.0},
        {"name": "size", "type": "range", "lower": 0.0, "upper": 1.0},
    ]
    spec["trial"]["command"] = ["python", str(ROOT / "tests" / "curve_trial.py")]
    spec["trial"]["args"] = ["--x={quality}", "--y={size}", "--epochs=12", "--seconds-per-epoch=0.4"]
    spec["trial"]["args"].append("--log-dir={log_dir}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    def counts() -> dict[str, int]:
        return dict(_get(cluster, namespace, "curves").get("status", {}).get("trials", {}))

    deadline = time.monotonic() + 400
    while counts().get("earlyStopped", 0) < 1:
        assert time.monotonic() < deadline, operator_process.log_file.read_text()[-4000:]
        time.sleep(0.3)
    metrics = operator_process.scrape()
    assert f'nas_trials{{experiment="curves",namespace="{namespace}",state="early_stopped"}} 1.0' in metrics
    assert "nas_training_seconds_saved{" in metrics
    operator_process.kill()  # in the middle: one decision made, trials still to come
    time.sleep(1)
    operator_process.start()

    status = _wait_phase(cluster, namespace, "curves", "Succeeded", operator_process.log_file, timeout=600)
    trials = status["trials"]
    assert trials["total"] == 8 and trials["earlyStopped"] >= 1
    assert trials["succeeded"] + trials["earlyStopped"] == 8, trials
    assert status["trainingSecondsSaved"] > 0
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    stored = ConfigMapStore(core, namespace, "curves").load()
    assert stored is not None
    stopped = [t for t in stored.state.trials.values() if t.status == "earlyStopped"]
    assert len(stopped) == trials["earlyStopped"]
    for trial in stopped:
        assert "stopped early at epoch" in trial.reason and trial.progression is not None
        assert "stop_pending" not in trial.handle
    # an early-stopped trial's Job is deleted; every other trial ran in exactly one pod of one Job
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    names = {j["metadata"]["name"] for j in jobs}
    assert names == {t.name for t in stored.state.trials.values() if t.status == "succeeded"}
    assert all(j["status"].get("succeeded") == 1 and not j["status"].get("failed") for j in jobs)
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector=involvedObject.name=curves").stdout
    assert "TrialEarlyStopped" in events
    shown = _nasctl(cluster, "status", "curves", "-n", namespace)
    assert f"{trials['earlyStopped']} stopped early" in shown.stdout and "early stopping saved about" in shown.stdout
    table = cluster.kubectl("get", "nasx", "curves", "-n", namespace).stdout.splitlines()
    column = table[0].split().index("EARLYSTOP")
    assert table[1].split()[column] == str(trials["earlyStopped"])


def test_warm_start_from_an_experiment_of_the_namespace_and_a_single_objective_search(
    cluster: ControlPlane, namespace: str, operator: Path
) -> None:
    """#14: a second experiment starts its model from the first one's trials; one objective reports its best trial."""
    first = _termination_message_experiment("first", 2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(first))
    assert _wait_phase(cluster, namespace, "first", "Succeeded", operator)["trials"]["succeeded"] == 2

    second = _termination_message_experiment("second", 2)
    second["spec"]["warmStart"] = {"experiments": ["first"]}
    second["spec"]["objectives"] = second["spec"]["objectives"][:1]  # val_acc alone: a plain hyperparameter search
    missing = _termination_message_experiment("third", 2)
    missing["spec"]["warmStart"] = {"experiments": ["no-such-experiment"]}
    for doc in (second, missing):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    status = _wait_phase(cluster, namespace, "second", "Succeeded", operator)
    assert status["warmStartTrials"] == 2 and status["trials"]["succeeded"] == 2
    # its own trials come after the two it started from; the budget counted only its own
    names = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name", "-l", "nas.operator.dev/experiment=second")
    assert sorted(names.stdout.split()) == ["job.batch/second-t2", "job.batch/second-t3"]
    best = status["bestTrial"]
    assert best["trial"] in ("second-t2", "second-t3") and status["bestValue"] == best["metrics"]["val_acc"]
    assert "paretoFront" not in status or status["paretoFront"] == []
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=WarmStarted").stdout
    assert "2 trial(s) of first given to the model" in events
    table = cluster.kubectl("get", "nasx", "second", "-n", namespace).stdout
    assert "BEST" in table.splitlines()[0] and f"{status['bestValue']:.4g}"[:4] in table.splitlines()[1]
    refused = _wait_phase(cluster, namespace, "third", "Failed", operator, timeout=120)
    assert refused["reason"] == "InvalidSpec"
    assert "spec.warmStart.experiments[0]: no NASExperiment no-such-experiment in namespace" in refused["message"]


def test_stage_two_jobs_carry_the_overrides_and_a_sigkill_in_stage_two_launches_nothing_twice(
    cluster: ControlPlane, namespace: str, operator_process: OperatorProcess
) -> None:
    """#14: the search's front trained again as Jobs with the full-training overrides; a restart in between."""
    doc = _termination_message_experiment("staged", 3)
    doc["spec"]["objectives"][1]["threshold"] = 1e6  # every trial a candidate: the front holds at least two
    args = [a for a in doc["spec"]["trial"]["args"] if not a.startswith("--epochs")]
    doc["spec"]["fullTraining"] = {
        "candidates": 2,
        "parallelism": 1,
        "trial": {
            "args": [*args, "--epochs=3"],
            "env": [{"name": "OMP_NUM_THREADS", "value": "2"}, {"name": "FULL_TRAINING_TEST", "value": "yes"}],
            "resources": {"cpu": "2", "memory": "1536Mi"},
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    def full_jobs() -> list[dict[str, Any]]:
        items = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        return [j for j in items if j["metadata"]["name"].startswith("staged-f")]

    deadline = time.monotonic() + 400
    while not full_jobs():
        status = _get(cluster, namespace, "staged").get("status", {})
        assert status.get("phase") != "Failed", status
        assert time.monotonic() < deadline, operator_process.log_file.read_text()[-4000:]
        time.sleep(0.2)
    operator_process.kill()  # in the middle of stage 2: one full training created, one still queued
    time.sleep(1)
    operator_process.start()

    status = _wait_phase(cluster, namespace, "staged", "Succeeded", operator_process.log_file)
    assert status["reason"] == "BudgetExhausted" and status["trials"]["succeeded"] == 3
    full = status["fullTraining"]
    assert (full["candidates"], full["succeeded"]) == (2, 2)
    jobs = full_jobs()
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    stored = ConfigMapStore(core, namespace, "staged").load()
    assert stored is not None
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(t.name for t in stored.state.full_trials.values())
    for job in jobs:  # each candidate trained once, in one pod, with the overrides
        assert job["status"].get("succeeded") == 1 and not job["status"].get("failed")
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = [*container.get("command", []), *container.get("args", [])]
        assert "--epochs=3" in command and not any(a.startswith("--epochs=") and a != "--epochs=3" for a in command)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["OMP_NUM_THREADS"] == "2" and env["FULL_TRAINING_TEST"] == "yes" and env["NAS_STAGE"] == "full"
        assert container["resources"]["limits"]["cpu"] in ("2", "2000m")
        index = int(job["metadata"]["name"].rsplit("-f", 1)[1])
        search = stored.state.trials[index]
        assert stored.state.full_trials[index].parameters == search.parameters
    search_jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    for job in search_jobs:
        if job["metadata"]["name"].startswith("staged-t"):
            container = job["spec"]["template"]["spec"]["containers"][0]
            assert "FULL_TRAINING_TEST" not in {e["name"] for e in container.get("env", [])}
    assert set(full["rankCorrelation"]) <= {"val_acc", "num_params"}  # 2 pairs: below the minimum, none reported
