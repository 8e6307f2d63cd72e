"""One operator for a whole cluster (#13): what the operator process costs with N experiments at once.

The operator is started exactly as tests/test_operator.py's OperatorProcess starts it (`kopf run -m
nas_operator.cluster.handlers --standalone --namespace=... --liveness=...`), on the real test control
plane (tests/k8s: kube-apiserver, controller-manager, scheduler and the fake kubelet that runs each
pod's command as a local process). Every experiment has two objectives over the digits MLP space;
its trials are a few lines of `python -c` that sleep `--trial-seconds`, then report the synthetic
response of bench/common.py (inlined) through the termination message. So the load is the
operator's: Job launches, polling, state saves, status patches and real model fits (initialTrials
2, the rest from qLogNEHVI).

Phases, each timed and bounded:

1. Control plane (with an audit log for the operator's own identity, see below), CRD, namespaces.
   A short window with no operator measures the control plane's own background request rate.
2. Idle cost: `--idle-experiments` experiments whose one trial sleeps past the window; once each
   trial is Running (as the operator's status says), nothing but the window passes: the bench
   sends no request to the API server between its two /metrics scrapes. Reported: the operator's
   requests per minute per experiment, by verb and resource.
3. Busy run: N experiments applied at once over `--namespaces` namespaces. Sampled every second:
   operator RSS and CPU (psutil, children included) and Kopf's liveness endpoint. Watched: every
   Job (apply -> first trial Job per experiment) and every experiment's status.
4. SIGKILL: when `--kill-at` of all trials are finished (by the operators' statuses), the operator
   is SIGKILLed and a new one started at once; the bench measures the time to steady state.
5. Completion and checks: every experiment Succeeded, maxTrials trials in its status, one Job per
   trial index, and each trial ran in exactly one pod (each trial appends
   "<namespace>/<job>/<pod uid>" to a marker file in the bench's directory when it starts).

Attribution of API requests. `apiserver_request_total` (the API server's own counter, scraped
with the admin certificate) counts every client: the controller-manager, the scheduler and the
fake kubelet (which lists all pods twice a second) as well as the operator. So the operator gets
its own client certificate (user `nas-bench-operator`, group system:masters: the same rights as
the tests' admin kubeconfig) and the API server writes an audit log of that user's requests
only (level Metadata, one line per request): the per-verb/resource breakdown is exactly the
operator's. The apiserver_request_total figures are reported beside it, with the background.

Steady state after the SIGKILL (time R = the new operator's start, right after the kill): every
experiment that was not finished at R has, after R, either (a) reached a terminal phase, or
(b) had a new trial Job created AND its status changed (written by the new operator). The
restart-to-steady time is the latest such moment minus R (and at least the time until the new
operator's liveness endpoint answers). A status change is any change of `.status` as seen by a
watch: no other client writes it, so each one is the new operator's doing. Reported beside it:
restart-to-all-reconciled, the weaker condition (b) without the Job: every such experiment's
status written once by the new operator (it has looked at every experiment again).

An operator that exits by itself (a crash, a signal from elsewhere) is a problem in the report;
it is restarted at once, as a Deployment would, up to `--max-exits` times, so that what the exit
cost (lost or doubled trials) is still checked.

    .venv/bin/python bench/operator_scale.py --quick                   # N=20, 2 to 3 minutes
    .venv/bin/python bench/operator_scale.py --experiments 100 --json scale.json
    git worktree add /tmp/nas-old <rev>
    .venv/bin/python bench/operator_scale.py --quick --source /tmp/nas-old   # an older operator

Options: --experiments N (100), --idle-experiments (N), --idle-window s (60), --trial-seconds (3),
--max-trials (5), --parallelism (2), --initial-trials (2), --namespaces (4), --kill-at fraction
(0.5; 0 skips the SIGKILL), --timeout s (auto), --max-exits (3), --source DIR, --env K=V (repeatable), --quick,
--json PATH, --keep (leave the work directory).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.k8s: the test control plane is the bench's cluster


def cluster_module() -> Any:
    """tests/k8s/cluster.py, imported at run time: the bench uses the tests' control plane, but type-checks alone
    (mypy would otherwise check the tests' modules too, which the project does not type-check)."""
    return importlib.import_module("tests.k8s.cluster")


def free_port() -> int:
    return int(cluster_module().free_port())


GROUP, VERSION, PLURAL = "nas.operator.dev", "v1alpha1", "nasexperiments"
OPERATOR_USER = "nas-bench-operator"
TERMINAL = ("Succeeded", "Failed", "Stopped")
STEP_METRICS = ("nas_reconcile_duration_seconds", "nas_step_duration_seconds")
GENERATION_METRIC = "nas_candidate_generation_seconds"
LIVENESS_TIMEOUT = 5.0
MIB = 2**20
Counts = dict[str, float]  # requests by "VERB resource[/subresource]"

# The trial: no braces (the spec's templating reads `{name}` as a placeholder) and no absolute path (the node agent
# moves absolute paths it does not know into the pod's private rootfs). The response is bench/common.py's, inlined so
# that the process imports nothing but the standard library. The marker line is written first, so that a pod that
# started but never finished still counts as a run.
TRIAL_CODE = """\
import json, math, os, sys, time
namespace, job, seconds, marker = sys.argv[1:5]
h1, h2, lr, epochs, dropout, batch = (float(v) for v in sys.argv[5:11])
pod = os.path.basename(os.environ.get('NAS_TEST_NODE_POD_DIR', '')) or os.environ.get('HOSTNAME') or str(os.getpid())
fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (namespace + '/' + job + '/' + pod + chr(10)).encode())
os.close(fd)
time.sleep(float(seconds))
acc = 0.99 - 0.5 * math.exp(-math.sqrt(h1 * h2) / 12) - 0.05 * (math.log10(lr) + 2.0) ** 2 - 0.1 / epochs
acc -= 0.05 * dropout ** 2
params = 65 * h1 + h1 * h2 + 11 * h2 + 10
with open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w') as out:
    out.write(json.dumps(dict(val_acc=acc, num_params=params)))
"""
PARAMETERS: list[dict[str, Any]] = [
    {"name": "hidden_size_1", "type": "range", "valueType": "int", "lower": 4, "upper": 128, "logScale": True},
    {"name": "hidden_size_2", "type": "range", "valueType": "int", "lower": 4, "upper": 128, "logScale": True},
    {"name": "learning_rate", "type": "range", "valueType": "float", "lower": 0.0001, "upper": 0.1, "logScale": True},
    {"name": "epochs", "type": "range", "valueType": "int", "lower": 5, "upper": 40},
    {"name": "dropout", "type": "range", "valueType": "float", "lower": 0.0, "upper": 0.5},
    {"name": "batch_size", "type": "choice", "values": [16, 32, 64, 128], "ordered": True},
]


def log(message: str) -> None:
    """Progress goes to stderr with a timestamp: the summary on stdout stays a clean table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- cluster


def audited_control_plane(workdir: Path) -> Any:
    """The test control plane, its API server also writing an audit log of the operator's requests only.

    Only the operator's user is logged (level Metadata, no RequestReceived stage): the log stays small and the API
    server's extra work is one line per operator request, whatever the control plane's own traffic. The flags are
    added by wrapping this one object's `_spawn` (tests/k8s/cluster.py stays the tests' own).
    """
    plane = cluster_module().ControlPlane(workdir, cluster_module().ensure_binaries())
    spawn = plane._spawn
    audit_log = workdir / "audit.log"

    def spawn_audited(name: str, command: list[str], cwd: Path | None = None) -> None:
        if name == "kube-apiserver":
            policy = workdir / "audit-policy.yaml"
            policy.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "audit.k8s.io/v1",
                        "kind": "Policy",
                        "omitStages": ["RequestReceived"],
                        "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
                    }
                )
            )
            command = [
                *command,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
            ]
        spawn(name, command, cwd)

    plane._spawn = spawn_audited
    return plane


def operator_kubeconfig(plane: Any, path: Path) -> Path:
    """A kubeconfig with a client certificate of the operator's own user, signed by the control plane's CA.

    Group system:masters: the operator has the rights the tests' admin kubeconfig gives it; only the name differs,
    which is what lets the audit log (and so the request counts) tell its requests from everyone else's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((plane.pki / "ca.crt").read_bytes())
    ca_key: Any = serialization.load_pem_private_key((plane.pki / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, OPERATOR_USER),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = plane.pki / "operator.crt", plane.pki / "operator.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": plane.server, "certificate-authority": str(plane.pki / "ca.crt")}}
        ],
        "users": [{"name": "operator", "user": {"client-certificate": str(cert_path), "client-key": str(key_path)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator", "namespace": "default"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class Api:
    """The bench's own clients (admin identity): one ApiClient per thread that uses it, urllib3 pools are not shared."""

    kubeconfig: Path

    def client(self) -> Any:
        from kubernetes import config

        loader: Any = config  # untyped in the client's stubs
        return loader.new_client_from_config(config_file=str(self.kubeconfig))

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client())

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.client())

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.client())


def request_counts(metrics_text: str) -> Counts:
    """apiserver_request_total summed over every label but verb, resource and subresource."""
    counts: Counts = defaultdict(float)
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.eE+-]+)$")
    label = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        labels = dict(label.findall(match.group(1)))
        resource = labels.get("resource") or "(non-resource)"
        sub = labels.get("subresource", "")
        key = f"{labels.get('verb', '?')} {resource}" + (f"/{sub}" if sub and labels.get("resource") else "")
        counts[key] += float(match.group(2))
    return counts


def scrape_apiserver(plane: Any) -> Counts:
    url = f"{plane.server}/metrics"
    with urllib.request.urlopen(url, timeout=30, context=plane._ssl()) as response:
        return request_counts(response.read().decode())


def delta(after: Counts, before: Counts) -> Counts:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] - before.get(key, 0.0) > 0}


def audit_requests(path: Path, since: float, until: float) -> Counts:
    """The operator's requests received in [since, until), by verb, resource and client (Kopf or the controller).

    A watch has two lines (ResponseStarted, ResponseComplete): requests are counted once by audit ID.
    """
    seen: set[str] = set()
    counts: Counts = defaultdict(float)
    if not path.exists():
        return counts
    with path.open(errors="replace") as lines:
        for line in lines:
            if OPERATOR_USER not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if (event.get("user") or {}).get("username") != OPERATOR_USER or event["auditID"] in seen:
                continue
            received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if not since <= received < until:
                continue
            seen.add(event["auditID"])
            ref = event.get("objectRef") or {}
            resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
            if ref.get("subresource"):
                resource += f"/{ref['subresource']}"
            agent = "kopf" if str(event.get("userAgent", "")).startswith("kopf") else "controller"
            counts[f"{event.get('verb', '?')} {resource} ({agent})"] += 1
    return counts


def per_minute(counts: Counts, seconds: float, divide: int = 1) -> dict[str, float]:
    """Requests per minute (per experiment with `divide`), most frequent first."""
    minutes = max(seconds, 1e-9) / 60
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return {key: round(value / minutes / divide, 2) for key, value in ordered}


# ----------------------------------------------------------------------------------------------- operator


class Operator:
    """The operator process, started as OperatorProcess starts it; optionally from another checkout (`--source`)."""

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        metrics_root: Path,
        log_file: Path,
        source: Path | None,
        extra_env: dict[str, str],
    ) -> None:
        self.namespaces = namespaces
        self.log_file = log_file
        self.source = source
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "NAS_METRICS_ROOT": str(metrics_root),
            "NAS_METRICS_ADDRESS": "127.0.0.1",
            **extra_env,
        }
        if source is not None:
            # Ahead of the editable install's finder (a meta-path hook appended after the path finder): checked below.
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(source / "operator"), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.health_port = 0
        self.started_at = 0.0

    @property
    def package_dir(self) -> Path:
        return (self.source or ROOT) / "operator" / "nas_operator"

    def check_package(self) -> str:
        """Which nas_operator the operator's interpreter imports with this environment; refuse any other checkout's."""
        python = Path(sys.executable).parent / "python"
        probe = subprocess.run(
            [str(python), "-c", "import nas_operator; print(nas_operator.__file__)"],
            env=self.env,
            cwd=self.source or ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found = Path(probe.stdout.strip()).resolve()
        if found.parent != self.package_dir.resolve():
            raise RuntimeError(f"the operator would import nas_operator from {found}, not from {self.package_dir}")
        return str(found)

    def start(self) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        command = [
            str(Path(sys.executable).parent / "kopf"),
            "run",
            "-m",
            "nas_operator.cluster.handlers",
            "--standalone",
            *[f"--namespace={namespace}" for namespace in self.namespaces],
            f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
        ]
        env = {**self.env, "NAS_METRICS_PORT": str(self.metrics_port)}
        with self.log_file.open("ab") as out:
            out.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(command)}\n".encode())
            out.flush()
            # Its own session: a Ctrl-C at the terminal reaches the bench, which then stops the operator itself.
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.source or ROOT,
                start_new_session=True,
            )
        self.started_at = time.time()

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def probe(self) -> str | None:
        """One liveness probe as a kubelet's: None when it passes, else why not (non-200, refused, timed out)."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=LIVENESS_TIMEOUT) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def live(self) -> bool:
        return self.probe() is None

    def wait_live(self, timeout: float) -> float:
        """Seconds from start until Kopf's liveness endpoint answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the operator exited ({self.returncode()}):\n{self.log_tail()}")
            if self.live():
                return time.time() - self.started_at
            time.sleep(0.2)
        raise TimeoutError(f"the operator's liveness endpoint did not answer in {timeout:.0f}s:\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def scrape(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
                return str(response.read().decode())
        except (OSError, urllib.error.URLError):
            return None

    def processes(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        assert self.process is not None
        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self) -> None:
        """SIGKILL, no handler, no cleanup (as a node dying); whatever it started goes too."""
        for process in reversed(self.processes()):
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None:
            return
        children = self.processes()[1:]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(processes: Iterable[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class Sampler(threading.Thread):
    """Every second: the operator's RSS and CPU seconds (children included), and one liveness probe.

    CPU is kept as a running total across the SIGKILL (the old process's last reading plus the new one's), so the mean
    over the busy phase includes the restart's own cost. A liveness probe counts as a failure (non-200 or no answer
    in 5 s) only while an operator is supposed to answer: not between the kill and the new one's first 200.
    """

    def __init__(self, operator: Operator) -> None:
        super().__init__(daemon=True, name="sampler")
        self.operator = operator
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int, float]] = []  # (time, rss bytes, cumulative cpu seconds)
        self.cpu_offset = 0.0
        self.last_cpu = 0.0
        self.pid: int | None = None
        self.probes = 0
        self.failures: list[tuple[float, str]] = []
        self.expect_live = True
        self.generation = 0  # bumped by each restart: a probe that straddles the SIGKILL counts for nothing
        self.live_again_at: float | None = None
        self._probe_thread = threading.Thread(target=self._probe_forever, daemon=True, name="liveness")

    def restarting(self) -> None:
        """Called just before the SIGKILL: probes fail until the new operator's first 200, and that is not counted."""
        with self.lock:
            self.expect_live = False
            self.generation += 1
            self.live_again_at = None

    def run(self) -> None:
        self._probe_thread.start()
        while not self.stopping.is_set():
            processes = self.operator.processes()
            pid = processes[0].pid if processes else None
            cpu = cpu_seconds(processes)
            with self.lock:
                if pid is not None and pid != self.pid:
                    self.cpu_offset += self.last_cpu  # a new process: the old one's total is kept
                    self.pid = pid
                if pid is not None:
                    self.last_cpu = cpu
                self.samples.append((time.time(), rss_bytes(processes), self.cpu_offset + self.last_cpu))
            self.stopping.wait(1.0)

    def _probe_forever(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            with self.lock:
                operator, generation = self.operator, self.generation
            problem = operator.probe()
            with self.lock:
                if generation != self.generation:
                    pass
                elif problem is None and not self.expect_live:
                    self.expect_live, self.live_again_at = True, time.time()
                elif self.expect_live:
                    self.probes += 1
                    if problem is not None:
                        self.failures.append((time.time(), problem))
            self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self._probe_thread.join(timeout=10)


# ----------------------------------------------------------------------------------------------- watches


class Watcher(threading.Thread):
    """List, then watch, one kind cluster-wide, calling `handle(type, object, time)` for each event (raw JSON).

    Raw JSON rather than the client's models: deserializing hundreds of Jobs into models costs the bench CPU that
    the operator, on the same two cores, would lose. A 410 Gone re-lists; any other error retries from the last
    resourceVersion.
    """

    def __init__(
        self, name: str, list_call: Callable[..., Any], handle: Callable[[str, dict[str, Any], float], None]
    ) -> None:
        super().__init__(daemon=True, name=name)
        self.list_call = list_call
        self.handle = handle
        self.stopping = threading.Event()
        self.synced = threading.Event()
        self.errors = 0

    def _relist(self) -> str:
        response = self.list_call(_preload_content=False, _request_timeout=60)
        document = json.loads(response.data)
        now = time.time()
        for item in document.get("items") or []:
            self.handle("ADDED", item, now)
        return str(document["metadata"]["resourceVersion"])

    def run(self) -> None:
        from kubernetes.watch import watch

        iter_resp_lines: Any = watch.iter_resp_lines  # untyped
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                    self.synced.set()
                response = self.list_call(
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=10,
                    _preload_content=False,
                    _request_timeout=30,
                )
                try:
                    for line in iter_resp_lines(response):
                        if not line:
                            continue
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            version = None if obj.get("code") == 410 else version
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind != "BOOKMARK":
                            self.handle(str(kind), obj, time.time())
                        if self.stopping.is_set():
                            break
                finally:
                    response.close()
                    response.release_conn()
            except Exception as exc:
                self.errors += 1
                if self.errors % 20 == 1:
                    log(f"{self.name} watch: {type(exc).__name__}: {exc} (retrying)")
                self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)


@dataclass
class ExperimentRecord:
    namespace: str
    name: str
    max_trials: int
    applied_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_changes: list[float] = field(default_factory=list)
    terminal_at: float | None = None
    job_times: list[float] = field(default_factory=list)  # first sight of each Job (each uid) owned by it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "")

    def finished_trials(self) -> int:
        counts = self.status.get("trials") or {}
        return sum(int(counts.get(k) or 0) for k in ("succeeded", "failed", "stopped", "earlyStopped"))


class Tracker:
    """What the watches saw: each experiment's status history and each Job's uids, with local times."""

    def __init__(self, namespaces: set[str]) -> None:
        self.namespaces = namespaces
        self.lock = threading.Lock()
        self.experiments: dict[str, ExperimentRecord] = {}
        self.job_uids: dict[str, dict[str, float]] = defaultdict(dict)  # "ns/job" -> uid -> first seen
        self.job_owner: dict[str, str] = {}

    def add(self, record: ExperimentRecord) -> None:
        with self.lock:
            self.experiments[record.key] = record

    def on_job(self, kind: str, job: dict[str, Any], now: float) -> None:
        meta = job.get("metadata") or {}
        if meta.get("namespace") not in self.namespaces or kind == "DELETED":
            return
        owner = next((o["name"] for o in meta.get("ownerReferences") or [] if o.get("kind") == "NASExperiment"), None)
        key = f"{meta['namespace']}/{meta['name']}"
        with self.lock:
            uids = self.job_uids[key]
            if meta.get("uid") in uids:
                return
            uids[str(meta.get("uid"))] = now
            if owner is not None:
                self.job_owner[key] = f"{meta['namespace']}/{owner}"
                record = self.experiments.get(f"{meta['namespace']}/{owner}")
                if record is not None:
                    record.job_times.append(now)

    def on_experiment(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        if kind == "DELETED":
            return
        with self.lock:
            record = self.experiments.get(f"{meta.get('namespace')}/{meta.get('name')}")
            status = obj.get("status") or {}
            if record is None or status == record.status:
                return
            record.status = status
            record.status_changes.append(now)
            if record.phase in TERMINAL and record.terminal_at is None:
                record.terminal_at = now

    def snapshot(self) -> list[ExperimentRecord]:
        with self.lock:
            return list(self.experiments.values())


def reconciled_at(record: ExperimentRecord, restart: float) -> float | None:
    """When the new operator first wrote this experiment's status (it has reconciled it once), or None."""
    return next((t for t in record.status_changes if t > restart), None)


def caught_up_at(record: ExperimentRecord, restart: float) -> float | None:
    """When the new operator had demonstrably taken this experiment over (see the module docstring), or None."""
    if record.terminal_at is not None and record.terminal_at > restart:
        return record.terminal_at
    changes = [t for t in record.status_changes if t > restart]
    jobs = [t for t in record.job_times if t > restart]
    if changes and jobs:
        return max(changes[0], jobs[0])
    return None


# ----------------------------------------------------------------------------------------------- statistics


def histogram(text: str | None, names: Iterable[str]) -> tuple[str | None, dict[float, float]]:
    """Cumulative bucket counts of the first histogram found, summed over every label set (experiments)."""
    if not text:
        return None, {}
    from prometheus_client.parser import text_string_to_metric_families

    families = {family.name: family for family in text_string_to_metric_families(text) if family.type == "histogram"}
    for name in names:
        if name in families:
            buckets: dict[float, float] = defaultdict(float)
            for sample in families[name].samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] += sample.value
            return name, dict(buckets)
    return None, {}


def merge(*histograms: dict[float, float]) -> dict[float, float]:
    merged: dict[float, float] = defaultdict(float)
    for buckets in histograms:
        for bound, count in buckets.items():
            merged[bound] += count
    return dict(merged)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket that holds the rank."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound, as Prometheus answers
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width > 0 else 1.0)
        lower, below = bound, count
    return lower


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(values),
        "p50": round(statistics.median(ordered), 2),
        "p90": round(ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


# ----------------------------------------------------------------------------------------------- the run


def experiment_document(
    name: str,
    namespace: str,
    seed: int,
    *,
    max_trials: int,
    parallelism: int,
    initial_trials: int,
    seconds: float,
    marker: Path,
) -> dict[str, Any]:
    args = [namespace, "{trial_name}", f"{seconds:g}", str(marker)]
    args += ["{" + p["name"] + "}" for p in PARAMETERS]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NASExperiment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"nas-bench": "operator-scale"}},
        "spec": {
            "parameters": PARAMETERS,
            "objectives": [
                {"metric": "val_acc", "goal": "maximize", "threshold": 0.5},
                {"metric": "num_params", "goal": "minimize", "threshold": 12000},
            ],
            "metrics": {"source": "terminationMessage"},
            "budget": {"maxTrials": max_trials, "parallelism": parallelism},
            "algorithm": {"name": "auto", "initialTrials": initial_trials, "seed": seed},
            "trial": {
                "image": "nas-bench/scale-trial:0",  # the test node ignores images; a real one needs python
                "command": ["python", "-c", TRIAL_CODE],
                "args": args,
                # Small requests: 2 x N trial pods must fit the test node's 32 CPUs.
                "resources": {"cpu": "100m", "memory": "64Mi"},
            },
        },
    }


class Bench:
    def __init__(self, options: argparse.Namespace, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.marker = workdir / "markers" / "trials.log"
        self.plane: Any = None
        self.api: Api | None = None
        self.operator_kubeconfig = workdir / "operator.kubeconfig"
        self.operators: list[Operator] = []
        self.watchers: list[Watcher] = []
        self.sampler: Sampler | None = None
        self.result: dict[str, Any] = {"config": {k: v for k, v in vars(options).items() if k != "json"}}
        self.problems: list[str] = []
        self.nas_operator_file = ""
        prefix = "scale"
        self.idle_namespaces = [f"{prefix}-idle-{k}" for k in range(options.namespaces)]
        self.busy_namespaces = [f"{prefix}-busy-{k}" for k in range(options.namespaces)]

    # ------------------------------------------------------------------ helpers

    @property
    def cluster(self) -> Any:
        assert self.plane is not None
        return self.plane

    @property
    def audit_log(self) -> Path:
        return Path(self.cluster.workdir) / "audit.log"

    def new_operator(self, namespaces: list[str], label: str) -> Operator:
        extra = dict(item.split("=", 1) for item in self.options.env)
        operator = Operator(
            self.operator_kubeconfig,
            namespaces,
            self.workdir / "metrics-root",
            self.workdir / f"operator-{label}.log",
            self.options.source,
            extra,
        )
        self.operators.append(operator)
        return operator

    def create_namespaces(self, names: list[str]) -> None:
        assert self.api is not None
        core = self.api.core()
        for name in names:
            core.create_namespace(
                {
                    "metadata": {
                        "name": name,
                        # The API server's Pod Security admission at its strictest, as the operator tests run trials.
                        "labels": {"pod-security.kubernetes.io/enforce": "restricted", "nas-bench": "operator-scale"},
                    }
                }
            )
        deadline = time.monotonic() + 60
        for name in names:  # pods need the namespace's default ServiceAccount
            while not core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no default ServiceAccount in {name}")
                time.sleep(0.2)

    def apply(self, documents: list[dict[str, Any]], records: dict[str, ExperimentRecord] | None = None) -> float:
        assert self.api is not None
        custom = self.api.custom()
        started = time.time()
        for document in documents:
            meta = document["metadata"]
            custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, document)
            if records is not None:
                records[f"{meta['namespace']}/{meta['name']}"].applied_at = time.time()
        return time.time() - started

    def list_experiments(self, namespaces: list[str]) -> list[dict[str, Any]]:
        assert self.api is not None
        custom = self.api.custom()
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            items += custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        return items

    # ------------------------------------------------------------------ phases

    def start_cluster(self) -> None:
        started = time.monotonic()
        self.plane = audited_control_plane(self.workdir / "cluster")
        self.plane.start()
        self.api = Api(self.plane.kubeconfig)
        operator_kubeconfig(self.plane, self.operator_kubeconfig)
        crd = (self.options.source or ROOT) / "crds" / "nas.operator.dev_nasexperiments.yaml"
        self.plane.kubectl("apply", "--server-side", "-f", str(crd))
        self.plane.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
        self.create_namespaces(self.idle_namespaces + self.busy_namespaces)
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        (self.workdir / "metrics-root").mkdir(exist_ok=True)
        seconds = time.monotonic() - started
        self.result["control_plane_s"] = round(seconds, 1)
        log(f"control plane, CRD and {2 * self.options.namespaces} namespaces ready in {seconds:.1f}s")

        window = self.options.background_window
        before = scrape_apiserver(self.cluster)
        time.sleep(window)
        counts = delta(scrape_apiserver(self.cluster), before)
        self.result["background"] = {
            "window_s": window,
            "requests_per_min": round(sum(counts.values()) / window * 60, 1),
            "breakdown_per_min": per_minute(counts, window),
        }
        log(f"control plane alone: {self.result['background']['requests_per_min']} requests/min (no operator)")

    def idle_phase(self) -> None:
        options = self.options
        count = options.idle_experiments
        if count <= 0:
            self.result["idle"] = None
            return
        phase_started = time.monotonic()
        operator = self.new_operator(self.idle_namespaces, "idle")
        self.nas_operator_file = operator.check_package()
        operator.start()
        ready = operator.wait_live(180)
        log(f"idle: operator live in {ready:.1f}s ({self.nas_operator_file})")
        sleep_for = options.idle_window + 900  # past the window and the deletion: the trial is Running throughout
        documents = [
            experiment_document(
                f"idle-{i:03d}",
                self.idle_namespaces[i % len(self.idle_namespaces)],
                i,
                max_trials=1,
                parallelism=1,
                initial_trials=1,
                seconds=sleep_for,
                marker=self.workdir / "markers" / "idle.log",
            )
            for i in range(count)
        ]
        applied = time.monotonic()
        self.apply(documents)
        deadline = time.monotonic() + max(180.0, 3.0 * count)
        assert self.api is not None
        core = self.api.core()
        while True:
            # Running twice over: the operator's status counts the trial running (its Job exists) and the pod itself
            # runs, so the window sees no Job or pod start-up from the control plane either.
            items = self.list_experiments(self.idle_namespaces)
            running = sum(1 for x in items if ((x.get("status") or {}).get("trials") or {}).get("running") == 1)
            pods = sum(
                len(core.list_namespaced_pod(ns, field_selector="status.phase=Running").items)
                for ns in self.idle_namespaces
            )
            if running == count and pods == count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"idle: {running} of {count} experiments running, {pods} pods Running")
            if not operator.alive():
                raise RuntimeError(f"idle: the operator exited:\n{operator.log_tail()}")
            time.sleep(2)
        to_running = time.monotonic() - applied
        log(f"idle: {count} experiments with their trial Running {to_running:.1f}s after apply; settling")
        time.sleep(options.settle)

        # The window: nothing but two scrapes of the API server (which apiserver_request_total does not count) and
        # local reads of the operator's /proc entries.
        processes = operator.processes()
        cpu_before = cpu_seconds(processes)
        before = scrape_apiserver(self.cluster)
        window_start = time.time()
        time.sleep(options.idle_window)
        window_end = time.time()
        after = scrape_apiserver(self.cluster)
        processes = operator.processes()
        cpu = cpu_seconds(processes) - cpu_before
        rss = rss_bytes(processes)
        time.sleep(2)  # requests received in the window and still in flight are logged on completion
        mine = audit_requests(self.audit_log, window_start, window_end)
        window = window_end - window_start
        total = delta(after, before)
        operator_per_min = sum(mine.values()) / window * 60
        apiserver_per_min = sum(total.values()) / window * 60
        background = self.result["background"]["requests_per_min"]
        self.result["idle"] = {
            "experiments": count,
            "window_s": round(window, 1),
            "apply_to_all_running_s": round(to_running, 1),
            "operator_requests": sum(mine.values()),
            "operator_requests_per_min": round(operator_per_min, 1),
            "operator_requests_per_min_per_experiment": round(operator_per_min / count, 2),
            "operator_breakdown_per_min_per_experiment": per_minute(mine, window, count),
            "apiserver_requests_per_min": round(apiserver_per_min, 1),
            "apiserver_requests_per_min_per_experiment": round(apiserver_per_min / count, 2),
            "apiserver_minus_background_per_min_per_experiment": round((apiserver_per_min - background) / count, 2),
            "apiserver_breakdown_per_min": per_minute(total, window),
            "operator_cpu_percent": round(100 * cpu / window, 1),
            "operator_rss_mib": round(rss / MIB, 1),
        }
        log(
            f"idle: operator {operator_per_min / count:.1f} requests/min per experiment "
            f"({operator_per_min:.0f}/min for {count}); API server {apiserver_per_min:.0f}/min in all; "
            f"operator CPU {100 * cpu / window:.1f}%"
        )

        # Deleted while their operator still runs: it removes the finalizers.
        custom = self.api.custom()
        for namespace in self.idle_namespaces:
            custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        deadline = time.monotonic() + 180
        while self.list_experiments(self.idle_namespaces):
            if time.monotonic() > deadline:
                self.problems.append("idle: experiments still there 180s after their deletion")
                break
            time.sleep(1)
        operator.stop()
        for namespace in self.idle_namespaces:
            core.delete_namespace(namespace)
        deadline = time.monotonic() + 120
        while any(core.list_namespaced_pod(ns).items for ns in self.idle_namespaces):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        self.result["idle"]["phase_s"] = round(time.monotonic() - phase_started, 1)
        log(f"idle phase done in {self.result['idle']['phase_s']}s")

    def busy_phase(self) -> None:
        options = self.options
        count = options.experiments
        phase_started = time.monotonic()
        tracker = Tracker(set(self.busy_namespaces))
        records: dict[str, ExperimentRecord] = {}
        documents = []
        for i in range(count):
            namespace = self.busy_namespaces[i % len(self.busy_namespaces)]
            record = ExperimentRecord(namespace, f"exp-{i:03d}", options.max_trials)
            records[record.key] = record
            tracker.add(record)
            documents.append(
                experiment_document(
                    record.name,
                    namespace,
                    i,
                    max_trials=options.max_trials,
                    parallelism=options.parallelism,
                    initial_trials=options.initial_trials,
                    seconds=options.trial_seconds,
                    marker=self.marker,
                )
            )
        assert self.api is not None
        batch, custom = self.api.batch(), self.api.custom()
        self.watchers = [
            Watcher("jobs", batch.list_job_for_all_namespaces, tracker.on_job),
            Watcher(
                "experiments",
                lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw),
                tracker.on_experiment,
            ),
        ]
        for watcher in self.watchers:
            watcher.start()
        for watcher in self.watchers:
            if not watcher.synced.wait(60):
                raise TimeoutError(f"the {watcher.name} watch did not start")

        operator = self.new_operator(self.busy_namespaces, "busy")
        self.nas_operator_file = operator.check_package()
        operator.start()
        ready = operator.wait_live(180)
        log(f"busy: operator live in {ready:.1f}s; applying {count} experiments")
        self.sampler = Sampler(operator)
        self.sampler.start()
        cluster_processes = {c.name: psutil.Process(c.process.pid) for c in self.cluster.components}
        cluster_cpu_before = {name: p.cpu_times() for name, p in cluster_processes.items()}
        api_before = scrape_apiserver(self.cluster)
        started = time.time()
        apply_seconds = self.apply(documents, records)
        log(f"busy: {count} experiments applied in {apply_seconds:.1f}s")

        total_trials = count * options.max_trials
        kill_after = math.ceil(options.kill_at * total_trials) if options.kill_at > 0 else None
        timeout = options.timeout or max(300.0, 18.0 * count + 40 * options.trial_seconds)
        deadline = time.monotonic() + timeout
        restart_at: float | None = None
        restart: dict[str, Any] | None = None
        pre_kill_metrics: str | None = None
        pre_kill_cpu: tuple[float, float] | None = None
        unfinished: list[ExperimentRecord] = []
        steady_at: float | None = None
        all_reconciled_at: float | None = None
        exits: list[dict[str, Any]] = []
        last_report = time.monotonic()
        outcome = "all experiments finished"
        assert self.sampler is not None
        sampler = self.sampler

        def replace(old: Operator, label: str) -> Operator:
            """A new operator at once, as a Deployment's kubelet would start one."""
            sampler.restarting()
            if old.alive():
                old.kill()
            new = self.new_operator(self.busy_namespaces, label)
            new.start()
            with sampler.lock:
                sampler.operator = new
            return new

        while True:
            snapshot = tracker.snapshot()
            finished = sum(r.finished_trials() for r in snapshot)
            done = sum(1 for r in snapshot if r.phase in TERMINAL)
            if not operator.alive():
                # Not the bench's doing: recorded as a problem, and the run goes on with a new operator (as in a
                # Deployment), so that what the exit cost (lost or doubled trials) is measured too.
                tail = [line for line in operator.log_tail(200).splitlines() if "Timer 'reconcile'" not in line][-6:]
                exits.append(
                    {"at_s": round(time.time() - started, 1), "returncode": operator.returncode(), "log": tail}
                )
                self.problems.append(f"busy: the operator exited by itself ({operator.returncode()})")
                log(f"busy: the operator exited ({operator.returncode()}):\n" + "\n".join(tail))
                if len(exits) > options.max_exits:
                    outcome = "stopped: the operator kept exiting"
                    break
                operator = replace(operator, f"busy-after-exit-{len(exits)}")
            if kill_after is not None and restart_at is None and finished >= kill_after:
                pre_kill_metrics = operator.scrape()
                with sampler.lock:
                    pre_kill_cpu = (time.time() - started, sampler.samples[-1][2] if sampler.samples else 0.0)
                unfinished = [r for r in snapshot if r.phase not in TERMINAL]
                operator = replace(operator, "busy-restarted")
                restart_at = operator.started_at
                restart = {
                    "killed_at_finished_trials": finished,
                    "experiments_finished_at_kill": done,
                    "experiments_unfinished_at_kill": len(unfinished),
                }
                log(f"busy: SIGKILL at {finished}/{total_trials} trials finished; new operator started")
            if restart_at is not None and restart is not None and steady_at is None:
                live = sampler.live_again_at
                if all_reconciled_at is None and live is not None:
                    seen = [reconciled_at(r, restart_at) for r in unfinished]
                    if all(t is not None for t in seen):
                        all_reconciled_at = max([live, *[t for t in seen if t is not None]])
                        restart["restart_to_all_reconciled_s"] = round(all_reconciled_at - restart_at, 1)
                times = [caught_up_at(r, restart_at) for r in unfinished]
                if live is not None and all(t is not None for t in times):
                    steady_at = max([live, *[t for t in times if t is not None]])
                    restart["restart_to_steady_s"] = round(steady_at - restart_at, 1)
                    log(f"busy: steady again {steady_at - restart_at:.1f}s after the restart")
            if done == count and (restart_at is None or steady_at is not None or kill_after is None):
                break
            if time.monotonic() > deadline:
                outcome = "timed out"
                self.problems.append(f"busy: not finished after {timeout:.0f}s ({done}/{count} experiments)")
                break
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                log(f"busy: {done}/{count} experiments finished, {finished}/{total_trials} trials")
            time.sleep(0.25)
        timed_out = outcome != "all experiments finished"
        ended = time.time()
        busy_seconds = ended - started
        log(f"busy: {outcome} after {busy_seconds:.1f}s")

        api_after = scrape_apiserver(self.cluster)
        post_metrics = operator.scrape()
        assert self.sampler is not None
        self.sampler.stop()
        cluster_cpu = {}
        for name, process in cluster_processes.items():
            with contextlib.suppress(psutil.Error):
                now_times, then = process.cpu_times(), cluster_cpu_before[name]
                cluster_cpu[name] = round(now_times.user + now_times.system - then.user - then.system, 1)
                if name == "node-agent":  # the trial processes it ran and reaped
                    cluster_cpu["trials"] = round(
                        now_times.children_user + now_times.children_system - then.children_user - then.children_system,
                        1,
                    )

        # ---- numbers
        samples = [s for s in self.sampler.samples if s[0] >= started]
        rss = [s[1] / MIB for s in samples]
        cpu_total = (samples[-1][2] - samples[0][2]) if len(samples) > 1 else 0.0
        cpu_span = (samples[-1][0] - samples[0][0]) if len(samples) > 1 else 1.0
        step_name, pre_steps = histogram(pre_kill_metrics, STEP_METRICS)
        post_name, post_steps = histogram(post_metrics, STEP_METRICS)
        steps = merge(pre_steps, post_steps)
        _, pre_gen = histogram(pre_kill_metrics, [GENERATION_METRIC])
        _, post_gen = histogram(post_metrics, [GENERATION_METRIC])
        generation = merge(pre_gen, post_gen)
        first_trial = {
            r.key: min(r.job_times) - r.applied_at for r in records.values() if r.job_times and r.applied_at is not None
        }
        by_namespace = {
            ns: summary([v for k, v in first_trial.items() if k.startswith(f"{ns}/")]) for ns in self.busy_namespaces
        }
        mine = audit_requests(self.audit_log, started, ended)
        api_total = delta(api_after, api_before)
        busy: dict[str, Any] = {
            "experiments": count,
            "trials": total_trials,
            "apply_s": round(apply_seconds, 1),
            "all_finished_s": None if timed_out else round(busy_seconds, 1),
            "operator_rss_mib_peak": round(max(rss), 1) if rss else None,
            "operator_rss_mib_mean": round(statistics.fmean(rss), 1) if rss else None,
            "operator_cpu_percent_mean": round(100 * cpu_total / cpu_span, 1),
            "operator_cpu_percent_mean_before_kill": (
                round(100 * pre_kill_cpu[1] / pre_kill_cpu[0], 1) if pre_kill_cpu and pre_kill_cpu[0] > 0 else None
            ),
            "operator_cpu_s": round(cpu_total, 1),
            "apiserver_requests_per_min": round(sum(api_total.values()) / busy_seconds * 60, 1),
            "apiserver_breakdown_per_min": per_minute(api_total, busy_seconds),
            "operator_requests_per_min": round(sum(mine.values()) / busy_seconds * 60, 1),
            "operator_requests_per_trial": round(sum(mine.values()) / total_trials, 1),
            "operator_breakdown_per_min": per_minute(mine, busy_seconds),
            "step_latency_s": {
                "metric": step_name or post_name,
                "count": int(steps.get(math.inf, 0)),
                "p50": quantile(steps, 0.5),
                "p99": quantile(steps, 0.99),
                "note": None if steps else "the operator exports no step-latency histogram under a known name",
            },
            "generation_latency_s": {
                "metric": GENERATION_METRIC,
                "count": int(generation.get(math.inf, 0)),
                "p50": quantile(generation, 0.5),
                "p99": quantile(generation, 0.99),
            },
            "apply_to_first_trial_s": {
                **summary(list(first_trial.values())),
                "missing": count - len(first_trial),
                "per_namespace": by_namespace,
            },
            "liveness": {
                "probes": self.sampler.probes,
                "failures": len(self.sampler.failures),
                "failures_detail": [f"{t - started:.1f}s: {why}" for t, why in self.sampler.failures[:20]],
            },
            "cluster_cpu_s": cluster_cpu,
            "operator_exits": exits,
            "watch_errors": {w.name: w.errors for w in self.watchers},
        }
        if restart is not None and restart_at is not None:
            live = self.sampler.live_again_at
            caught = [t - restart_at for r in unfinished if (t := caught_up_at(r, restart_at)) is not None]
            restart.setdefault("restart_to_steady_s", None)
            restart.setdefault("restart_to_all_reconciled_s", None)
            restart.update(
                {
                    "liveness_back_s": round(live - restart_at, 1) if live is not None else None,
                    "caught_up_s": summary(caught),
                    "not_caught_up": [r.key for r in unfinished if caught_up_at(r, restart_at) is None][:20],
                    "definition": (
                        "steady: every experiment unfinished at the kill has, after the new operator started, reached "
                        "a terminal phase or both had a new trial Job created and its status changed; and the new "
                        "operator's liveness endpoint answered. all_reconciled: the weaker first half, every such "
                        "experiment's status written once by the new operator"
                    ),
                }
            )
            if restart["restart_to_steady_s"] is None:
                self.problems.append("restart: steady state not reached")
        self.result["busy"] = busy
        self.result["restart"] = restart
        self.result["busy"]["phase_s"] = round(time.monotonic() - phase_started, 1)

        self.verify(records, tracker)
        for watcher in self.watchers:
            watcher.stopping.set()
        operator.stop()

    def verify(self, records: dict[str, ExperimentRecord], tracker: Tracker) -> None:
        """Every experiment Succeeded with maxTrials trials; one Job per trial index; each trial ran in one pod."""
        assert self.api is not None
        batch, core = self.api.batch(), self.api.core()
        items = {
            f"{x['metadata']['namespace']}/{x['metadata']['name']}": x
            for x in self.list_experiments(self.busy_namespaces)
        }
        jobs: dict[str, dict[str, Any]] = {}
        pods: dict[str, str] = {}
        for namespace in self.busy_namespaces:
            response = batch.list_namespaced_job(namespace, _preload_content=False)
            for job in json.loads(response.data)["items"]:
                jobs[f"{namespace}/{job['metadata']['name']}"] = job
            response = core.list_namespaced_pod(namespace, _preload_content=False)
            for pod in json.loads(response.data)["items"]:
                pods[pod["metadata"]["uid"]] = pod["metadata"]["name"]
        runs: Counter[str] = Counter()
        if self.marker.exists():
            for line in self.marker.read_text().splitlines():
                namespace, job, _pod = line.split("/", 2)
                runs[f"{namespace}/{job}"] += 1

        not_succeeded, wrong_counts, lost, twice, bad_jobs = [], [], [], [], []
        expected: set[str] = set()
        for key, record in records.items():
            status = (items.get(key) or {}).get("status") or {}
            if status.get("phase") != "Succeeded":
                not_succeeded.append(f"{key}: {status.get('phase')} {status.get('reason', '')}".strip())
            counts = status.get("trials") or {}
            if counts.get("total") != record.max_trials or counts.get("succeeded") != record.max_trials:
                wrong_counts.append(f"{key}: total {counts.get('total')} succeeded {counts.get('succeeded')}")
            for index in range(record.max_trials):
                job_key = f"{record.namespace}/{record.name}-t{index}"
                expected.add(job_key)
                job = jobs.get(job_key)
                succeeded = int(((job or {}).get("status") or {}).get("succeeded") or 0)
                failed = int(((job or {}).get("status") or {}).get("failed") or 0)
                if job is None or succeeded < 1 or runs[job_key] < 1:
                    lost.append(f"{job_key}: job {'present' if job else 'missing'}, {runs[job_key]} runs")
                if runs[job_key] > 1 or len(tracker.job_uids.get(job_key, {})) > 1 or succeeded > 1:
                    twice.append(
                        f"{job_key}: {runs[job_key]} runs, {len(tracker.job_uids.get(job_key, {}))} Job objects"
                    )
                if job is not None and (succeeded != 1 or failed):
                    bad_jobs.append(f"{job_key}: succeeded {succeeded} failed {failed}")
        extra = sorted(k for k in jobs if k not in expected)
        self.result["verification"] = {
            "experiments": len(records),
            "experiments_succeeded": len(records) - len(not_succeeded),
            "not_succeeded": not_succeeded[:20],
            "status_count_mismatches": wrong_counts[:20],
            "trials_expected": len(expected),
            "trials_lost": len(lost),
            "trials_run_twice": len(twice),
            "jobs_not_exactly_one_success": len(bad_jobs),
            "extra_jobs": extra[:20],
            "lost": lost[:20],
            "run_twice": twice[:20],
            "bad_jobs": bad_jobs[:20],
            "pods_seen": len(pods),
        }
        for name, values in (
            ("experiments not Succeeded", not_succeeded),
            ("trial counts wrong", wrong_counts),
            ("trials lost", lost),
            ("trials run twice", twice),
            ("jobs without exactly one success", bad_jobs),
            ("extra jobs", extra),
        ):
            if values:
                self.problems.append(f"{name}: {len(values)} (first: {values[0]})")

    def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.stopping.set()
        for watcher in self.watchers:
            watcher.stopping.set()
        for operator in self.operators:
            with contextlib.suppress(Exception):
                operator.stop()
        if self.plane is not None:
            self.plane.stop()


# ----------------------------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    busy, idle, restart = result.get("busy") or {}, result.get("idle") or {}, result.get("restart") or {}
    verification = result.get("verification") or {}
    steps = busy.get("step_latency_s") or {}
    first = busy.get("apply_to_first_trial_s") or {}

    def show(value: Any, unit: str = "") -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.3g}{unit}" if abs(value) < 1 else f"{value:,.1f}{unit}"
        return f"{value}{unit}"

    rows = [
        ("experiments (busy / idle)", f"{busy.get('experiments', 'n/a')} / {idle.get('experiments', 'n/a')}"),
        ("operator", result.get("nas_operator_file", "")),
        (
            "operator RSS peak / mean",
            f"{show(busy.get('operator_rss_mib_peak'))} / {show(busy.get('operator_rss_mib_mean'))} MiB",
        ),
        (
            "operator CPU mean (busy; before the kill)",
            f"{show(busy.get('operator_cpu_percent_mean'))}% ; "
            f"{show(busy.get('operator_cpu_percent_mean_before_kill'))}%",
        ),
        (
            "API requests/min, busy: operator / API server",
            f"{show(busy.get('operator_requests_per_min'))} / {show(busy.get('apiserver_requests_per_min'))}",
        ),
        ("API requests/min per idle experiment (operator)", show(idle.get("operator_requests_per_min_per_experiment"))),
        ("  API server, all clients, per idle experiment", show(idle.get("apiserver_requests_per_min_per_experiment"))),
        ("  control plane alone (no operator), /min", show((result.get("background") or {}).get("requests_per_min"))),
        ("operator CPU while idle", f"{show(idle.get('operator_cpu_percent'))}%"),
        (
            "step latency p50 / p99",
            f"{show(steps.get('p50'), ' s')} / {show(steps.get('p99'), ' s')} ({steps.get('count', 0)} steps)",
        ),
        ("apply -> first trial Job p50 / max", f"{show(first.get('p50'), ' s')} / {show(first.get('max'), ' s')}"),
        (
            "restart -> all reconciled / steady",
            f"{show(restart.get('restart_to_all_reconciled_s'), ' s')} / "
            f"{show(restart.get('restart_to_steady_s'), ' s')}",
        ),
        ("operator exits (not the bench's SIGKILL)", show(len(busy.get("operator_exits") or []))),
        ("liveness failures", show((busy.get("liveness") or {}).get("failures"))),
        (
            "experiments Succeeded",
            f"{verification.get('experiments_succeeded', 'n/a')} of {verification.get('experiments', 'n/a')}",
        ),
        (
            "trials lost / run twice",
            f"{verification.get('trials_lost', 'n/a')} / {verification.get('trials_run_twice', 'n/a')}",
        ),
        ("wall time", show(result.get("wall_s"), " s")),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    breakdown = idle.get("operator_breakdown_per_min_per_experiment") or {}
    if breakdown:
        lines += ["", "Idle: the operator's requests per minute per experiment, by verb and resource:"]
        lines += [f"  {value:8.2f}  {key}" for key, value in list(breakdown.items())[:15]]
    busy_breakdown = busy.get("operator_breakdown_per_min") or {}
    if busy_breakdown:
        lines += ["", "Busy: the operator's requests per minute, by verb and resource:"]
        lines += [f"  {value:8.1f}  {key}" for key, value in list(busy_breakdown.items())[:15]]
    if result.get("problems"):
        lines += ["", "PROBLEMS:", *[f"  - {p}" for p in result["problems"]]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=100, help="experiments of the busy run (N)")
    parser.add_argument("--idle-experiments", type=int, default=None, help="experiments of the idle phase (default N)")
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds of the idle measurement")
    parser.add_argument("--background-window", type=float, default=20.0, help="seconds of the no-operator window")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds between all-Running and the idle window")
    parser.add_argument("--trial-seconds", type=float, default=3.0)
    parser.add_argument("--max-trials", type=int, default=5)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--initial-trials", type=int, default=2, help="Sobol trials; the rest come from the model")
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument(
        "--kill-at", type=float, default=0.5, help="fraction of trials finished at the SIGKILL (0: none)"
    )
    parser.add_argument(
        "--max-exits", type=int, default=3, help="operator exits (not the bench's SIGKILL) tolerated, each restarted"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the busy run (default scales with N)")
    parser.add_argument("--source", type=Path, default=None, help="run the operator from this checkout")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="extra operator environment")
    parser.add_argument("--quick", action="store_true", help="N=20, idle 20 over 30 s, maxTrials 4 (~4 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    options = parser.parse_args(argv)
    if options.quick:
        options.experiments, options.max_trials, options.idle_window = 20, 4, 30.0
        options.background_window = 10.0
        if options.idle_experiments is None:
            options.idle_experiments = 20
    if options.idle_experiments is None:
        options.idle_experiments = options.experiments
    if options.source is not None:
        options.source = options.source.resolve()
        if not (options.source / "operator" / "nas_operator").is_dir():
            parser.error(f"--source {options.source}: no operator/nas_operator there")
    for item in options.env:
        if "=" not in item:
            parser.error(f"--env {item!r}: expected K=V")
    if options.parallelism > options.max_trials or options.initial_trials > options.max_trials:
        parser.error("--parallelism and --initial-trials must not exceed --max-trials")
    return options


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the run through the `finally` that stops every process it started.

    SIGINT too, explicitly: a shell without job control starts background commands with SIGINT ignored, and Python
    then never turns it into KeyboardInterrupt.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def source_revision(source: Path | None) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(source or ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="nas-scale-"))
    bench = Bench(options, workdir)
    bench.result.update(
        {
            "source": str(options.source or ROOT),
            "revision": source_revision(options.source),
            "from_this_working_tree": options.source is None,
            "cpus": os.cpu_count(),
            "workdir": str(workdir) if options.keep else None,
        }
    )
    code = 2
    try:
        with interruptible():
            log(f"work directory {workdir}")
            bench.start_cluster()
            bench.idle_phase()
            bench.busy_phase()
            code = 0
    except KeyboardInterrupt as exc:
        bench.problems.append(f"interrupted ({exc or 'Ctrl-C'})")
        log("interrupted: stopping everything this run started")
    except Exception as exc:
        bench.problems.append(f"error: {type(exc).__name__}: {exc}")
        log(f"error: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            bench.cleanup()
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.result["nas_operator_file"] = bench.nas_operator_file
    bench.result["wall_s"] = round(time.monotonic() - started, 1)
    bench.result["problems"] = bench.problems
    bench.result["ok"] = code == 0 and not bench.problems
    print(table(bench.result))
    if options.json is not None:
        options.json.write_text(json.dumps(bench.result, indent=2, default=str))
    if code == 0 and bench.problems:
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
