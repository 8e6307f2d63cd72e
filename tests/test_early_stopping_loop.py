"""Early stopping in the loop: partial curves read while trials write them, the stop recorded, killed, remembered.

The trials are fakes (tests/fakes.py) that write real TensorBoard event records, one epoch per poll, into real
directories; the rule and the reader are the real ones.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from nas_operator.core.backend import Observation
from nas_operator.core.loop import reconcile_engine
from nas_operator.core.progress import RunningCurves, newest_subdirectory, read_curves
from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.core.status import build_status
from nas_operator.resource.spec import EarlyStopping, NASExperimentSpec
from nas_operator.resource.spec_checks import SpecError, load_experiment

from .conftest import toy_doc
from .fakes import FakeBackend, FakeEngine, Script
from .test_event_reader import EVENTS, _append, _events, _scalar
from .test_loop import Harness

# index -> (accuracy after each epoch, parameter count logged once at the start)
CURVES: dict[int, tuple[list[float], float]] = {
    0: ([0.50, 0.70, 0.80, 0.85, 0.90], 100.0),
    1: ([0.40, 0.60, 0.70, 0.75, 0.80], 50.0),
    2: ([0.20, 0.25, 0.30, 0.32, 0.33], 200.0),  # big and poor: dominated by trial 0 from epoch 1 on
    3: ([0.10, 0.15, 0.20, 0.22, 0.23], 10.0),  # poor but the smallest: it may extend the front
}


def es_doc(**early_stopping: Any) -> dict[str, Any]:
    doc = toy_doc(maxTrials=4, parallelism=1)
    spec = doc["spec"]
    spec["objectives"] = [
        {"metric": "acc", "goal": "maximize"},
        {"metric": "params", "goal": "minimize"},
    ]
    spec["metrics"] = {
        "source": "tensorboard",
        "claimName": "logs",
        "definitions": [{"name": "acc", "reduce": "max"}, {"name": "params"}],
    }
    spec["earlyStopping"] = {"progression": "epoch", "minProgression": 1, "minReferenceTrials": 2, **early_stopping}
    return doc


def es_spec(**early_stopping: Any) -> NASExperimentSpec:
    return load_experiment(es_doc(**early_stopping)).spec


class CurveBackend(FakeBackend):
    """Each poll of a running trial appends its next epoch (acc and epoch tags) to a real event file."""

    def __init__(self, root: Path) -> None:
        super().__init__(lambda name: Script(polls=len(CURVES[_index(name)][0]) + 1))
        self.root = root
        self.kill_failures = 0

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        return self.root / trial_name

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        return self.log_dir(experiment, trial.name)

    def poll(self, trial: TrialRecord) -> Observation:
        name = trial.handle.get("name")
        if name in self.running:
            acc, params = CURVES[_index(name)]
            epoch = self.running[name]
            path = self.log_dir("toy", name) / EVENTS
            if epoch == 0:
                _events(path, [("params", 0, params), ("epoch", 0, 0.0)])
            if epoch < len(acc):
                _append(
                    path, _scalar("epoch", 10 * epoch + 9, float(epoch)) + _scalar("acc", 10 * epoch + 9, acc[epoch])
                )
        observation = super().poll(trial)
        if observation.status == "succeeded":
            observation.log_dir = self.log_dir("toy", name)
        return observation

    def kill(self, trial: TrialRecord) -> None:
        if self.kill_failures:
            self.kill_failures -= 1
            raise RuntimeError("the API server is unavailable")
        super().kill(trial)


def _index(name: str) -> int:
    return int(name.rsplit("-t", 1)[1])


def test_a_dominated_trial_is_stopped_killed_and_reported_and_a_small_one_is_kept(tmp_path: Path) -> None:
    backend = CurveBackend(tmp_path)
    h = Harness(es_spec(), backend)
    h.run()
    state = h.state
    assert [state.trials[i].status for i in range(4)] == ["succeeded", "succeeded", "earlyStopped", "succeeded"]
    stopped = state.trials[2]
    assert stopped.progression == 1.0
    assert stopped.metrics == {"acc": 0.25, "params": 200.0}  # measured when stopped
    assert "at epoch 1" in stopped.reason and "dominated by trial 0" in stopped.reason
    assert backend.killed == ["toy-t2"] and "stop_pending" not in stopped.handle
    assert h.engine.statuses[2] == "EARLY_STOPPED"
    assert h.engine.completed[2] == stopped.projected
    assert stopped.projected["params"] == 200.0 and stopped.projected["acc"] == pytest.approx(0.25 + 0.20)
    assert [e.trial for e in h.events if e.reason == "TrialEarlyStopped"] == ["toy-t2"]
    # the trial budget counts it; the front and the hypervolume are made of finished trials only
    status = build_status(h.loop.spec, state)
    assert status.trials.total == 4 and status.trials.early_stopped == 1 and status.trials.succeeded == 3
    assert {p.index for p in status.pareto_front} == {0, 1, 3}
    assert status.training_seconds_saved is not None and status.training_seconds_saved > 0


def test_without_early_stopping_every_trial_runs_to_its_end(tmp_path: Path) -> None:
    doc = es_doc()
    del doc["spec"]["earlyStopping"]
    h = Harness(load_experiment(doc).spec, CurveBackend(tmp_path))
    h.run()
    assert h.state.count("succeeded") == 4 and h.state.count("earlyStopped") == 0
    assert build_status(h.loop.spec, h.state).training_seconds_saved is None


def test_a_kill_that_fails_is_retried_and_a_restart_keeps_the_decision(tmp_path: Path) -> None:
    backend = CurveBackend(tmp_path)
    backend.kill_failures = 1
    h = Harness(es_spec(), backend)
    for _ in range(200):
        h.loop.step()
        h.clock.advance(1)
        if h.state.trials.get(2) is not None and h.state.trials[2].status == "earlyStopped":
            break
    assert h.state.trials[2].handle.get("stop_pending") is True  # decided and saved; the kill did not go through
    assert "toy-t2" in backend.running

    # a restart from what was saved: the decision holds, the trial is killed, nothing runs twice
    state, snapshot = h.store.load()
    assert state.trials[2].status == "earlyStopped" and state.trials[2].handle["stop_pending"]
    engine = FakeEngine.restore(snapshot)
    reconcile_engine(engine, state)  # type: ignore[arg-type]
    assert engine.statuses[2] == "EARLY_STOPPED"
    resumed = Harness(h.loop.spec, backend, engine=engine, state=state, store=h.store)
    resumed.run()
    assert "toy-t2" in backend.killed and "toy-t2" not in backend.running
    assert "stop_pending" not in state.trials[2].handle
    assert state.trials[2].status == "earlyStopped"
    assert backend.launches == {f"toy-t{i}": 1 for i in range(4)}


def test_a_state_with_an_early_stopped_trial_round_trips(tmp_path: Path) -> None:
    h = Harness(es_spec(), CurveBackend(tmp_path))
    h.run()
    state, _ = h.store.load()
    assert state.trials[2].status == "earlyStopped"
    assert state.trials[2].projected == h.state.trials[2].projected
    old = copy.deepcopy(state.to_json())
    old["format"] = 2
    for trial in old["trials"]:
        for key in ("progression", "projected", "saved_seconds"):
            del trial[key]
    assert LoopState.from_json(old).trials[0].progression is None  # a format-2 state still reads


def test_the_termination_message_source_is_refused_with_early_stopping() -> None:
    doc = es_doc()
    doc["spec"]["metrics"]["source"] = "terminationMessage"
    with pytest.raises(SpecError) as raised:
        load_experiment(doc)
    assert "spec.earlyStopping: needs learning curves" in str(raised.value)
    doc = es_doc(progression="step", decisionInterval=0.5)
    with pytest.raises(SpecError, match=r"spec.earlyStopping.decisionInterval: must be at least 1"):
        load_experiment(doc)
    doc = es_doc()
    del doc["spec"]["earlyStopping"]["minProgression"]
    with pytest.raises(SpecError, match=r"spec.earlyStopping.minProgression"):
        load_experiment(doc)


# ---------------------------------------------------------------------------------------------- partial curves


def test_partial_curves_grow_incrementally_and_wait_for_a_half_written_record(tmp_path: Path) -> None:
    rule = EarlyStopping(progression="epoch", min_progression=1)
    running = RunningCurves(es_spec(), rule)
    path = _events(tmp_path / EVENTS, [("params", 0, 64.0), ("epoch", 0, 0.0), ("acc", 5, 0.3)])
    first = running.update("t", tmp_path)
    assert first is not None and first.progression == 0.0
    assert first.metrics["acc"].at(0) == pytest.approx(0.3) and first.metrics["params"].final == 64.0

    record = _scalar("epoch", 10, 1.0) + _scalar("acc", 10, 0.5)
    _append(path, record[:20])  # the writer is in the middle of a record
    assert running.update("t", tmp_path).progression == 0.0  # type: ignore[union-attr]
    size = path.stat().st_size
    _append(path, record[20:])
    second = running.update("t", tmp_path)
    assert second is not None and second.progression == 1.0 and second.metrics["acc"].at(1) == pytest.approx(0.5)
    reader = running._watches["t"].reader
    assert reader._files[(EVENTS,)].offset == path.stat().st_size > size  # only the new bytes were read

    # a retried attempt writes elsewhere: a new reader, the old one dropped when the trial is no longer running
    retry = tmp_path / "retry"
    _events(retry / EVENTS, [("epoch", 0, 0.0), ("acc", 1, 0.9)])
    assert running.update("t", retry).metrics["acc"].final == pytest.approx(0.9)  # type: ignore[union-attr]
    running.keep_only([])
    assert len(running) == 0


def test_step_progression_and_a_finished_trials_curves(tmp_path: Path) -> None:
    rule = EarlyStopping(progression="step", min_progression=1)
    _events(tmp_path / EVENTS, [("params", 0, 64.0), ("acc", 100, 0.3), ("acc", 200, 0.6), ("acc", 300, 0.5)])
    curves = read_curves(es_spec(), rule, tmp_path)
    assert curves is not None and curves.progression == 300
    assert curves.metrics["acc"].at(250) == pytest.approx(0.6)  # reduce max: the best so far
    assert read_curves(es_spec(), rule, tmp_path / "missing") is None


def test_the_newest_pod_directory_is_the_live_one_and_links_are_ignored(tmp_path: Path) -> None:
    import os

    assert newest_subdirectory(tmp_path / "nothing") is None
    (tmp_path / "pod-a").mkdir()
    (tmp_path / "pod-b").mkdir()
    os.utime(tmp_path / "pod-a", (1000, 1000))
    os.utime(tmp_path / "pod-b", (2000, 2000))
    (tmp_path / "elsewhere").symlink_to("/")
    (tmp_path / "file").write_text("x")
    assert newest_subdirectory(tmp_path) == tmp_path / "pod-b"
