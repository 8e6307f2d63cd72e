"""A real Kubernetes control plane for tests: etcd, kube-apiserver, controller-manager, scheduler.

Built from the Go module proxy by hack/build-test-cluster.sh (once per machine, cached under
~/.cache/nas-operator/k8s-<version>/) and started here on 127.0.0.1 only, in a temporary
directory, with generated certificates, RBAC authorization and an admin kubeconfig. Pods are
run by the test node agent (node_agent.py), so Jobs really complete. `stop()` kills only the
processes this object started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.k8s.pki import CertificateAuthority, service_account_keys

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = ROOT / "hack" / "versions.env"
BUILD_SCRIPT = ROOT / "hack" / "build-test-cluster.sh"
NODE_NAME = "nas-test-node"


class ClusterError(RuntimeError):
    """The control plane did not come up; the message carries the failing component's log tail."""


def versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VERSIONS_FILE.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}


def cache_root() -> Path:
    return Path(os.environ.get("NAS_TEST_CLUSTER_CACHE", Path.home() / ".cache" / "nas-operator"))


def cache_dir() -> Path:
    return cache_root() / f"k8s-{versions()['KUBERNETES_VERSION']}"


def ensure_binaries() -> Path:
    """The binaries directory, building it first if this machine does not have it yet."""
    v = versions()
    stamp = cache_dir() / f".complete-{v['KUBERNETES_VERSION']}-{v['ETCD_VERSION']}-{v['HELM_VERSION']}"
    if not stamp.exists():
        print(f"building the test control plane into {cache_dir()} (once per machine)", file=sys.stderr)
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    return cache_dir() / "bin"


def servicemonitor_crd() -> Path:
    """The Prometheus Operator's ServiceMonitor CRD, fetched from the Go module proxy once per machine."""
    version = versions()["PROMETHEUS_OPERATOR_VERSION"]
    directory = cache_root() / "crds" / f"prometheus-operator-{version}"
    if not (directory / ".complete").exists():
        subprocess.run(["bash", str(ROOT / "hack" / "fetch-crds.sh")], check=True)
    return directory / "monitoring.coreos.com_servicemonitors.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class ControlPlane:
    workdir: Path
    binaries: Path
    components: list[Component] = field(default_factory=list)
    api_port: int = 0
    etcd_port: int = 0

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def bin(self, name: str) -> str:
        return str(self.binaries / name)

    # -------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 120.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki.mkdir(exist_ok=True)
        ca = CertificateAuthority(self.pki)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        )
        admin = ca.issue("admin", "nas-test-admin", organization="system:masters")
        sa_key, sa_pub = service_account_keys(self.pki)
        self.api_port, self.etcd_port = free_port(), free_port()
        self._write_kubeconfig(self.kubeconfig, ca.cert_path, client_cert=admin)

        peer_port = free_port()
        self._spawn(
            "etcd",
            [
                self.bin("etcd"),
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), "etcd", timeout)
        self._spawn(
            "kube-apiserver",
            [
                self.bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={ca.cert_path}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--v=1",
            ],
        )
        self._wait(self._api_ready, "kube-apiserver", timeout)
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            [
                self.bin("kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={ca.cert_path}",
                "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                "--concurrent-job-syncs=10",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [self.bin("kube-scheduler"), *common, f"--secure-port={free_port()}", "--v=1"],
        )
        self._wait(self._default_service_account_exists, "kube-controller-manager", timeout)
        self._spawn(
            "node-agent",
            [
                sys.executable,
                "-m",
                "tests.k8s.node_agent",
                f"--kubeconfig={self.kubeconfig}",
                f"--node={NODE_NAME}",
                f"--root={self.workdir / 'node'}",
            ],
            cwd=ROOT,
        )
        self._wait(self._node_ready, "node-agent", timeout)
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            if component.process.poll() is None:
                component.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for component in reversed(self.components):
            try:
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait(timeout=5)
        self.components.clear()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------- helpers

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 150,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.bin("kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def wait_established(self, crd: str, timeout: float = 60.0) -> None:
        """Wait for a CRD's Established condition.

        Not `kubectl wait`: right after a create, the CRD may have no conditions yet, and `kubectl wait` then fails
        at once ("status.conditions accessor error") instead of waiting.
        """
        deadline = time.monotonic() + timeout
        query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        while self.kubectl("get", f"crd/{crd}", "-o", query, check=False).stdout.strip() != "True":
            if time.monotonic() > deadline:
                raise ClusterError(f"CRD {crd} not Established after {timeout:g}s")
            time.sleep(0.2)

    def token_for(self, namespace: str, service_account: str, duration: str = "2h") -> str:
        """A bound token for a ServiceAccount (the TokenRequest API, as a pod would get)."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        self._write_kubeconfig(path, self.pki / "ca.crt", token=token)
        return path

    def logs(self, name: str) -> str:
        return _tail(self.workdir / "logs" / f"{name}.log", 60)

    def _write_kubeconfig(
        self, path: Path, ca: Path, client_cert: tuple[Path, Path] | None = None, token: str | None = None
    ) -> None:
        user: dict[str, str] = {}
        if client_cert:
            user = {"client-certificate": str(client_cert[0]), "client-key": str(client_cert[1])}
        if token:
            user = {"token": token}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": "default"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _spawn(self, name: str, command: list[str], cwd: Path | None = None) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )
        self.components.append(Component(name, process, log))

    def _wait(self, ready: object, name: str, timeout: float) -> None:
        component = next(c for c in self.components if c.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                break
            with contextlib.suppress(Exception):
                if ready():  # type: ignore[operator]
                    return
            time.sleep(0.25)
        state = "exited" if component.process.poll() is not None else f"not ready after {timeout:.0f}s"
        self.stop()
        raise ClusterError(f"{name} {state}; last lines of its log:\n{_tail(component.log)}")

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)

    def _api_ready(self) -> bool:
        return self._http_ok(f"{self.server}/readyz", self._ssl())

    def _default_service_account_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

    def _node_ready(self) -> bool:
        result = self.kubectl(
            "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
        )
        return result.stdout.strip() == "True"


def main() -> int:
    """`python -m tests.k8s.cluster [--once]`: start the test control plane by hand (until Ctrl-C)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--once", action="store_true", help="start, report the start-up time, stop")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    binaries = ensure_binaries()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nas-cluster-"))
    started = time.monotonic()
    plane = ControlPlane(workdir, binaries).start()
    print(f"control plane {versions()['KUBERNETES_VERSION']} ready in {time.monotonic() - started:.1f}s")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    try:
        if not args.once:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
