"""Shared fixtures: example specs as dicts, and a spec builder for small variations."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def digits_doc() -> dict[str, Any]:
    return load_yaml(EXAMPLES / "digits-mlp.yaml")


def toy_doc(**budget: Any) -> dict[str, Any]:
    """A small 2-objective experiment over two floats, evaluated in-process or by a fake backend."""
    document: dict[str, Any] = {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "metadata": {"name": "toy"},
        "spec": {
            "parameters": [
                {"name": "x", "type": "range", "lower": 0.0, "upper": 1.0},
                {"name": "y", "type": "range", "lower": 0.0, "upper": 1.0},
            ],
            "objectives": [
                {"metric": "f1", "goal": "minimize", "threshold": 1.1},
                {"metric": "f2", "goal": "minimize", "threshold": 1.1},
            ],
            "budget": {"maxTrials": 6, "parallelism": 2, **budget},
            "algorithm": {"name": "sobol", "seed": 1},
            "trial": {"image": "toy:latest", "command": ["true"], "args": ["--x={x}", "--y={y}"]},
            "metrics": {"source": "terminationMessage"},
        },
    }
    return copy.deepcopy(document)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the test control plane before any test runs when cluster tests are selected.

    A cold build takes 15-20 minutes on 2 cores: it must not count against a test's timeout,
    so it happens here, once, rather than inside the session fixture.
    """
    if any(item.get_closest_marker("cluster") for item in session.items):
        from tests.k8s.cluster import ensure_binaries

        ensure_binaries()


from tests.k8s.fixtures import cluster, namespace  # noqa: E402,F401  (fixtures for the cluster tests)
