"""pytest fixtures around the real test control plane: one cluster per session, a namespace per test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.k8s.cluster import ControlPlane, ensure_binaries


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """Builds the binaries if this machine lacks them (it does not skip), then starts the control plane."""
    binaries = ensure_binaries()
    started = ControlPlane(tmp_path_factory.mktemp("cluster"), binaries).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in {name}")
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
