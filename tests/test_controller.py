"""The per-experiment controller without a cluster: what it returns when a spec is bad or a step fails."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from nas_operator.cluster.controller import ExperimentController
from nas_operator.storage.store import StoreConflict

from .conftest import toy_doc


def _controller() -> ExperimentController:
    # An API client that points nowhere: these steps must not need the API server.
    return ExperimentController(client.ApiClient(client.Configuration()), "team-a", "toy", "uid-1")


def test_an_invalid_spec_gives_the_same_status_at_every_step_so_nothing_is_patched() -> None:
    controller = _controller()
    spec = toy_doc()["spec"]
    spec["trial"]["args"] = ["--x={x:.3f}"]
    first = controller.step(spec, 1)
    assert first["phase"] == "Failed" and first["reason"] == "InvalidSpec"
    assert "spec.trial.args[0]" in first["message"]
    assert controller.step(spec, 1) == first  # same transition time: the handler sees no change


def test_a_failing_step_is_reported_and_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    controller = _controller()
    calls: list[int] = []

    def failing_loop(spec: Any) -> Any:
        calls.append(1)
        raise StoreConflict("ConfigMap team-a/toy-nas-state changed since it was read (409 Conflict)")

    monkeypatch.setattr(controller, "_loop", failing_loop)
    status = controller.step(toy_doc()["spec"], 1)
    assert (status["phase"], status["reason"]) == ("Pending", "StoreConflict")
    controller.step(toy_doc()["spec"], 1)  # the first retry comes at once
    assert len(calls) == 2
    again = controller.step(toy_doc()["spec"], 1)  # then it backs off instead of rebuilding at every step
    assert len(calls) == 2 and again == controller.previous.model_dump(mode="json", by_alias=True, exclude_none=True)
