"""Stage 2 (spec.fullTraining): candidates from the proxy front, full trainings with the overrides, restarts, tau."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nas_operator.core.backend import TrialLaunch
from nas_operator.core.full_training import kendall_tau, select_candidates
from nas_operator.core.status import build_status
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import SpecError, full_training_template, load_experiment

from .conftest import toy_doc
from .fakes import FakeBackend, FakeEngine, MemoryStore, Script
from .test_loop import Harness


def two_stage_doc(candidates: int = 3, **full: Any) -> dict[str, Any]:
    document = toy_doc(maxTrials=6, parallelism=2)
    document["spec"]["fullTraining"] = {
        "candidates": candidates,
        "parallelism": 1,
        "trial": {"args": ["--x={x}", "--y={y}", "--full"], "env": [{"name": "EPOCHS", "value": "40"}]},
        **full,
    }
    return document


def spec_of(document: dict[str, Any]) -> NASExperimentSpec:
    return load_experiment(document).spec


# The fake engine proposes x = index / 100: trial i measures f1 = i, f2 = 6 - i (every trial on the front) on the
# proxy; in full, the order of f1 is kept and f2's is reversed.
def proxy_and_full(name: str) -> Script:
    kind, index = name.rsplit("-", 1)[1][0], int(name.rsplit("-", 1)[1][1:])
    if kind == "t":
        return Script(polls=2, metrics={"f1": float(index) / 10, "f2": (6.0 - index) / 10})
    if index == 2:  # one full training fails: reported on its own
        return Script(polls=2, status="failed", message="exit code 1: out of memory")
    return Script(polls=3, metrics={"f1": float(index) / 10, "f2": float(index) / 10})


class RecordingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__(proxy_and_full)
        self.launched: list[TrialLaunch] = []

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        self.launched.append(launch)
        return super().launch(launch)


def test_candidates_come_from_the_front_then_the_next_layers_and_only_inside_the_thresholds() -> None:
    spec = spec_of(toy_doc())  # minimise f1, f2; thresholds 1.1
    results = {
        0: {"f1": 0.2, "f2": 0.8},  # front
        1: {"f1": 0.8, "f2": 0.2},  # front
        2: {"f1": 0.5, "f2": 0.5},  # front
        3: {"f1": 0.6, "f2": 0.9},  # second layer (dominated by 2)
        4: {"f1": 0.9, "f2": 0.9},  # third layer
        5: {"f1": 0.1, "f2": 5.0},  # outside a threshold: never a candidate
    }
    assert select_candidates(spec, results, 2) == [0, 2]  # the front, in the order of the first objective
    assert select_candidates(spec, results, 10) == [0, 2, 1, 3, 4]


def test_kendall_tau_is_scipys_and_undefined_below_three_pairs() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3, abs=1e-4)
    assert kendall_tau([1, 2], [1, 2]) is None and kendall_tau([1, 1, 1], [1, 2, 3]) is None


def test_the_overrides_replace_fields_merge_env_and_are_checked_where_they_are_written() -> None:
    document = two_stage_doc()
    document["spec"]["trial"]["env"] = [{"name": "EPOCHS", "value": "3"}, {"name": "SEED", "value": "1"}]
    template = full_training_template(spec_of(document))
    assert template.args == ["--x={x}", "--y={y}", "--full"] and template.image == "toy:latest"
    assert [(e.name, e.value) for e in template.env] == [("SEED", "1"), ("EPOCHS", "40")]
    for field, value, said in (
        ("args", ["--x={nope}"], 'spec.fullTraining.trial.args[0]: placeholder "{nope}" names no parameter'),
        ("resources", {"cpu": "lots"}, "spec.fullTraining.trial.resources.cpu: String should match pattern"),
        ("env", [{"name": "NAS_STAGE", "value": "x"}], 'spec.fullTraining.trial.env[0].name: "NAS_STAGE"'),
    ):
        bad = copy.deepcopy(document)
        bad["spec"]["fullTraining"]["trial"][field] = value
        with pytest.raises(SpecError) as refused:
            load_experiment(bad)
        assert said in str(refused.value)


def test_stage_two_trains_the_candidates_with_the_overrides_and_reports_both_fronts_and_tau() -> None:
    backend = RecordingBackend()
    h = Harness(spec_of(two_stage_doc(candidates=4)), backend)
    h.run()
    assert (h.state.phase, h.state.reason, h.state.stage) == ("Succeeded", "BudgetExhausted", "done")
    search = [launch for launch in backend.launched if "-t" in launch.name]
    full = [launch for launch in backend.launched if "-f" in launch.name]
    assert [launch.name for launch in search] == [f"toy-t{i}" for i in range(6)]
    # four candidates: the proxy front holds all six, taken in the order of f1
    assert [launch.name for launch in full] == ["toy-f0", "toy-f1", "toy-f2", "toy-f3"]
    for launch in full:  # the overrides, the same parameters as the search trial, the stage said
        assert launch.command == ["true", f"--x={launch.parameters['x']}", "--y=0.5", "--full"]
        assert launch.env["EPOCHS"] == "40" and launch.env["NAS_STAGE"] == "full"
        assert launch.parameters == h.state.trials[launch.index].parameters
    assert all("--full" not in launch.command for launch in search)
    assert backend.max_concurrent <= 2 and h.engine.generate_calls  # the engine was never asked during stage 2
    assert len(h.engine.statuses) == 6  # no full training reached the model
    failed = h.state.full_trials[2]
    assert failed.status == "failed" and "out of memory" in failed.reason
    assert h.state.count("succeeded") == 6  # a failed full training never touches the search's results
    status = build_status(h.loop.spec, h.state)
    full_status = status.full_training
    assert full_status is not None and (full_status.candidates, full_status.succeeded, full_status.failed) == (4, 3, 1)
    # full f1 keeps the proxy order (tau 1); full f2 = f1 reverses proxy f2's order (tau -1): a warning
    assert full_status.rank_correlation == {"f1": 1.0, "f2": -1.0}
    assert [p.trial for p in full_status.pareto_front] == ["toy-f0"]  # f0 dominates in full
    condition = next(c for c in status.conditions if c.type == "ProxyRankCorrelation")
    assert (condition.status, condition.reason) == ("False", "LowRankCorrelation")
    assert "3 of 4 candidate(s) trained in full" in h.state.message
    reasons = [e.reason for e in h.events]
    assert reasons.count("FullTrainingLaunched") == 4 and reasons.count("FullTrainingFailed") == 1
    assert "LowRankCorrelation" in reasons and reasons.index("BudgetExhausted") > reasons.index("FullTrainingStarted")


def test_a_restart_in_the_middle_of_stage_two_launches_nothing_twice() -> None:
    backend = RecordingBackend()
    store = MemoryStore()
    h = Harness(spec_of(two_stage_doc(candidates=4)), backend, store=store)
    while not (h.state.stage == "full" and any(t.status == "running" for t in h.state.full_trials.values())):
        h.loop.step()
        h.clock.advance(1.0)
    # a crash: the process and its memory are gone; the backend (the cluster) keeps the running Job
    state, snapshot = store.load()
    again = Harness(h.loop.spec, backend, engine=FakeEngine.restore(snapshot), state=state, store=store, clock=h.clock)
    again.run()
    assert (again.state.phase, again.state.stage) == ("Succeeded", "done")
    assert all(count == 1 for count in backend.launches.values()), backend.launches
    assert sorted(n for n in backend.launches if "-f" in n) == ["toy-f0", "toy-f1", "toy-f2", "toy-f3"]
    assert again.engine.generate_calls == []  # nothing of the search was asked again


def test_a_failed_search_has_no_stage_two_and_a_raised_budget_trains_only_new_candidates() -> None:
    failing = RecordingBackend()
    failing.script = lambda name: Script(polls=1, status="failed", message="boom")
    h = Harness(spec_of(two_stage_doc() | {}), failing)
    h.run()
    assert h.state.phase == "Failed" and h.state.full_trials == {}

    backend = RecordingBackend()
    h = Harness(spec_of(two_stage_doc(candidates=2)), backend)
    h.run()
    first = sorted(h.state.full_trials)
    assert first == [0, 1]
    raised = two_stage_doc(candidates=3)
    raised["spec"]["budget"]["maxTrials"] = 8
    h.loop.update_spec(spec_of(raised))
    h.run()
    assert h.state.stage == "done" and sorted(h.state.full_trials) == [0, 1, 2]
    assert sum(1 for launch in backend.launched if launch.name == "toy-f0") == 1


def test_an_edit_of_full_training_during_stage_two_changes_nothing_already_planned() -> None:
    backend = RecordingBackend()
    h = Harness(spec_of(two_stage_doc(candidates=4)), backend)
    while h.state.stage != "full":
        h.loop.step()
        h.clock.advance(1.0)
    edited = two_stage_doc(candidates=4)
    del edited["spec"]["fullTraining"]  # removed (or changed) while stage 2 runs
    h.loop.update_spec(spec_of(edited))
    h.run()
    full = [launch for launch in backend.launched if "-f" in launch.name]
    assert len(full) == 4 and all(launch.command[-1] == "--full" for launch in full)  # the plan it started with


def test_a_run_interrupted_while_draining_after_convergence_resumes_and_ends() -> None:
    document = toy_doc(maxTrials=50, parallelism=2)
    document["spec"]["budget"]["convergence"] = {"window": 4, "minImprovement": 0.01}
    spec = spec_of(document)
    store = MemoryStore()
    backend = FakeBackend(lambda name: Script(polls=2 if int(name.rsplit("t", 1)[1]) % 2 else 5))
    h = Harness(spec, backend, store=store)
    while not (h.loop.convergence() is not None and h.loop.convergence().converged and h.state.count("running")):
        h.loop.step()
        h.clock.advance(1.0)
    h.loop.interrupt()  # Ctrl-C while the last trials drain
    state, snapshot = store.load()
    assert (state.phase, state.reason) == ("Stopped", "Interrupted")
    again = Harness(spec, backend, engine=FakeEngine.restore(snapshot), state=state, store=store, clock=h.clock)
    again.run()
    assert (again.state.phase, again.state.reason) == ("Succeeded", "Converged")
    assert again.state.count("queued", "launching", "running") == 0
