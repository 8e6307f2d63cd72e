"""Test doubles for the loop: an engine and a backend that live in memory.

Named as fakes: the engine proposes deterministic points without a model, and the backend
"runs" a trial by looking up a scripted outcome. Tests of the real Ax engine and of real
processes live in test_engine.py and test_local_backend.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_operator.core.backend import Observation, TrialLaunch
from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.search.engine import Candidate


class FakeEngine:
    """Proposes x = index/100 for every parameter; records what it was told."""

    def __init__(self) -> None:
        self.statuses: dict[int, str] = {}
        self.completed: dict[int, dict[str, float]] = {}
        self.generate_calls: list[int] = []

    def generate(self, count: int) -> list[Candidate]:
        self.generate_calls.append(count)
        out = []
        for _ in range(count):
            index = len(self.statuses)
            self.statuses[index] = "RUNNING"
            out.append(Candidate(index, {"x": index / 100, "y": 0.5}, "Fake"))
        return out

    def complete(self, index: int, metrics: Mapping[str, float]) -> None:
        assert self.statuses[index] == "RUNNING", (index, self.statuses[index])
        self.statuses[index] = "COMPLETED"
        self.completed[index] = dict(metrics)

    def fail(self, index: int, reason: str) -> None:
        assert self.statuses[index] == "RUNNING"
        self.statuses[index] = "FAILED"

    def abandon(self, index: int) -> None:
        self.statuses[index] = "ABANDONED"

    def early_stop(self, index: int, projected: Mapping[str, float]) -> None:
        assert self.statuses[index] == "RUNNING", (index, self.statuses[index])
        self.statuses[index] = "EARLY_STOPPED"
        self.completed[index] = dict(projected)

    def trial_statuses(self) -> dict[int, str]:
        return dict(self.statuses)

    def snapshot(self) -> dict[str, Any]:
        return {"statuses": dict(self.statuses), "completed": dict(self.completed)}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> FakeEngine:
        engine = cls()
        engine.statuses = {int(k): v for k, v in snapshot["statuses"].items()}
        engine.completed = {int(k): v for k, v in snapshot["completed"].items()}
        return engine


@dataclass
class Script:
    """How a fake trial ends: after `polls` polls, with `status` and these metrics."""

    polls: int = 1
    status: str = "succeeded"
    metrics: dict[str, float] = field(default_factory=lambda: {"f1": 0.5, "f2": 0.5})
    message: str = ""


class FakeBackend:
    """Trials that end after a scripted number of polls; counts launches per trial name."""

    def __init__(self, script: Callable[[str], Script] | None = None) -> None:
        self.script = script or (lambda name: Script())
        self.launches: dict[str, int] = {}
        self.running: dict[str, int] = {}
        self.killed: list[str] = []
        self.max_concurrent = 0

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        return Path("/nonexistent") / trial_name

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        return str(self.log_dir(experiment, trial_name)), "/nonexistent"

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        return self.log_dir(experiment, trial.name)

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        if launch.name in self.running:  # adopt: never a second copy
            return {"name": launch.name}
        self.launches[launch.name] = self.launches.get(launch.name, 0) + 1
        self.running[launch.name] = 0
        self.max_concurrent = max(self.max_concurrent, len(self.running))
        return {"name": launch.name}

    def poll(self, trial: TrialRecord) -> Observation:
        name = trial.handle.get("name")
        if name not in self.running:
            return Observation("missing", message="no such job")
        self.running[name] += 1
        script = self.script(name)
        if self.running[name] < script.polls:
            return Observation("running")
        del self.running[name]
        if script.status == "succeeded":
            return Observation("succeeded", 0, termination_message=json.dumps(script.metrics))
        return Observation("failed", 1, message=script.message or "exit code 1")

    def kill(self, trial: TrialRecord) -> None:
        name = trial.handle.get("name")
        if name in self.running:
            del self.running[name]
            self.killed.append(name)


class MemoryStore:
    """Keeps the last saved document (as JSON text, so it is really serializable) and counts saves."""

    def __init__(self) -> None:
        self.saved: str | None = None
        self.saves = 0
        self.fail_after: int | None = None

    def save(self, state: LoopState, engine_snapshot: dict[str, Any]) -> None:
        self.saves += 1
        if self.fail_after is not None and self.saves > self.fail_after:
            raise RuntimeError("store unavailable")
        self.saved = json.dumps({"state": state.to_json(), "engine": engine_snapshot})

    def load(self) -> tuple[LoopState, dict[str, Any]]:
        assert self.saved is not None
        document = json.loads(self.saved)
        return LoopState.from_json(document["state"]), document["engine"]


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
