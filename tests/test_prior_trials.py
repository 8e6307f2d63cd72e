"""Warm start: which earlier trials fit this space (and why the others do not), and what the model does with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas_operator.core.loop import create_engine, restore_engine, trial_outcomes
from nas_operator.core.prior_trials import select_prior_trials
from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.storage.store import FileStore

from .test_single_objective import single_doc


def space_doc(**spec: Any) -> dict[str, Any]:
    """A mixed space: an int range, a float range, an ordered numeric choice, a fixed parameter; two objectives."""
    document = single_doc()
    document["spec"].update(
        parameters=[
            {"name": "width", "type": "range", "valueType": "int", "lower": 8, "upper": 64},
            {"name": "rate", "type": "range", "lower": 0.0, "upper": 0.5},
            {"name": "batch", "type": "choice", "values": [16, 32, 64]},
            {"name": "epochs", "type": "fixed", "value": 3},
        ],
        objectives=[
            {"metric": "acc", "goal": "maximize", "threshold": 0.5},
            {"metric": "size", "goal": "minimize", "threshold": 100.0},
        ],
        outcomeConstraints=["latency <= 5"],
        trial={"command": ["true"], "args": ["{width}", "{rate}", "{batch}"]},
        metrics={
            "source": "terminationMessage",
            "definitions": [{"name": "latency", "tag": "latency", "reduce": "last"}],
        },
        **spec,
    )
    return document


def spec_of(document: dict[str, Any]) -> NASExperimentSpec:
    return load_experiment(document, cluster=False).spec


def source(trials: list[tuple[str, dict[str, Any], dict[str, float]]]) -> LoopState:
    state = LoopState("earlier", "x")
    for index, (status, parameters, metrics) in enumerate(trials):
        state.trials[index] = TrialRecord(
            index=index, name=f"earlier-t{index}", parameters=parameters, generator="Sobol",
            status=status, metrics=metrics,  # type: ignore[arg-type]
        )  # fmt: skip
    return state


GOOD = {"width": 16, "rate": 0.1, "batch": 32, "epochs": 3}
MEASURED = {"acc": 0.8, "size": 40.0, "latency": 2.0, "extra": 1.0}


def test_only_trials_that_mean_the_same_here_are_used_and_every_other_is_counted_under_its_reason() -> None:
    spec = spec_of(space_doc())
    trials = [
        ("succeeded", GOOD, MEASURED),
        ("succeeded", {**GOOD, "width": 16.0, "dropout": 0.3}, MEASURED),  # an int as 16.0; an extra parameter
        ("succeeded", {**GOOD, "width": 128}, MEASURED),  # a wider earlier space
        ("succeeded", {**GOOD, "width": 16.5}, MEASURED),  # not an int
        ("succeeded", {**GOOD, "batch": 128}, MEASURED),  # a choice this space does not have
        ("succeeded", {**GOOD, "batch": "32"}, MEASURED),  # a string where this space has numbers
        ("succeeded", {k: v for k, v in GOOD.items() if k != "rate"}, MEASURED),
        ("succeeded", {**GOOD, "epochs": 10}, MEASURED),  # trained otherwise than this experiment's fixed value
        ("succeeded", {k: v for k, v in GOOD.items() if k != "epochs"}, MEASURED),  # did not have it: fine
        ("succeeded", GOOD, {"acc": 0.9, "size": 30.0}),  # lacks a constrained metric
        ("succeeded", GOOD, {**MEASURED, "acc": float("nan")}),
        ("failed", GOOD, {}),
        ("earlyStopped", GOOD, MEASURED),
    ]
    selection = select_prior_trials(spec, [("earlier", source(trials))])
    assert [t.trial for t in selection.trials] == ["earlier-t0", "earlier-t1", "earlier-t8"]
    first, second, third = selection.trials
    assert second.parameters == GOOD and isinstance(second.parameters["width"], int)  # typed as this space holds it
    assert third.parameters["epochs"] == 3  # the fixed value is this experiment's
    assert first.metrics == {"acc": 0.8, "size": 40.0, "latency": 2.0}  # only what this model needs
    assert dict(selection.skipped) == {
        "with width outside this space": 2,
        "with batch outside this space": 2,
        "without parameter rate": 1,
        "with epochs other than its fixed value here": 1,
        "without a finite latency": 1,
        "without a finite acc": 1,
    }
    assert selection.summary().startswith("3 trial(s) of earlier given to the model; skipped: 2 with width")


def test_parameter_constraints_of_the_new_space_apply() -> None:
    spec = spec_of(space_doc(parameterConstraints=["width + 100 * rate <= 40"]))
    trials = [("succeeded", GOOD, MEASURED), ("succeeded", {**GOOD, "width": 32}, MEASURED)]  # 26 and 42
    selection = select_prior_trials(spec, [("earlier", source(trials))])
    assert [t.trial for t in selection.trials] == ["earlier-t0"]
    assert dict(selection.skipped) == {"outside the parameter constraints": 1}


@pytest.mark.engine
def test_the_model_starts_from_the_prior_trials_and_a_restore_keeps_them() -> None:
    spec = spec_of(single_doc())  # x, y in [0, 1]; minimise loss; 4 initial trials
    prior = [
        {"source": "a", "trial": f"a-t{i}", "parameters": {"x": x, "y": y}, "metrics": {"loss": (x - 0.3) ** 2}}
        for i, (x, y) in enumerate([(0.1, 0.1), (0.9, 0.2), (0.5, 0.5), (0.2, 0.9), (0.7, 0.6)])
    ]
    state = LoopState("bowl", spec_fingerprint(spec), prior=prior)
    engine = create_engine(spec, "bowl", state)
    first = engine.generate(2)
    # five observations cover the initialization budget (Ax counts attached trials): the model proposes at once,
    # and this experiment's own trials come after the prior ones
    assert [c.index for c in first] == [5, 6] and {c.generator for c in first} == {"MBM"}
    for candidate in first:
        state.trials[candidate.index] = TrialRecord(
            index=candidate.index, name=f"bowl-t{candidate.index}", parameters=candidate.parameters,
            generator=candidate.generator, status="succeeded", metrics={"loss": 0.01 * candidate.index},
        )  # fmt: skip
        engine.complete(candidate.index, {"loss": 0.01 * candidate.index})
    restored = restore_engine(spec, engine.snapshot(), state)
    assert restored.trial_statuses() == engine.trial_statuses()  # the prior trials are there again, completed
    assert [o.index for o in trial_outcomes(state)] == [5, 6]  # and not in the trial table


def _experiment(tmp_path: Path, name: str, upper: float, **spec: Any) -> Path:
    document = single_doc(maxTrials=6)
    document["metadata"]["name"] = name
    document["spec"]["parameters"][0]["upper"] = upper
    document["spec"].update(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _nasctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nas_operator.cli", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.engine
def test_nasctl_run_warm_starts_from_an_earlier_run_beside_it_and_refuses_a_missing_one(tmp_path: Path) -> None:
    earlier = _experiment(tmp_path, "bowl-v1", upper=1.0)
    assert _nasctl(tmp_path, "run", str(earlier), "--no-progress").returncode == 0
    # a wider space: x up to 2; the earlier trials all fit it
    wider = _experiment(tmp_path, "bowl-v2", upper=2.0, warmStart={"experiments": ["bowl-v1"]})
    done = _nasctl(tmp_path, "run", str(wider), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warm start: 6 trial(s) of bowl-v1 given to the model" in " ".join(done.stdout.split())
    stored = FileStore(tmp_path / "nas-results" / "bowl-v2").load()
    assert stored is not None and len(stored.state.prior) == 6
    assert sorted(stored.state.trials) == list(range(6, 12))  # its own six trials, the budget untouched
    assert {t.generator for t in stored.state.trials.values()} == {"MBM"}
    # a narrower space from the wider run: its trials with x > 1 are counted as skipped; --warm-start names a dir
    narrow = _experiment(tmp_path, "bowl-v3", upper=1.0)
    done = _nasctl(tmp_path, "run", str(narrow), "--no-progress", "--warm-start", "nas-results/bowl-v2")
    assert done.returncode == 0, done.stdout + done.stderr
    stored3 = FileStore(tmp_path / "nas-results" / "bowl-v3").load()
    assert stored3 is not None
    outside = sum(1 for t in stored.state.trials.values() if t.parameters["x"] > 1.0)
    assert len(stored3.state.prior) == 6 - outside
    if outside:
        assert f"skipped: {outside} with x outside this space" in " ".join(done.stdout.split())
    missing = _experiment(tmp_path, "bowl-v4", upper=1.0, warmStart={"experiments": ["nothing-here"]})
    refused = _nasctl(tmp_path, "run", str(missing), "--no-progress")
    assert refused.returncode != 0
    assert "spec.warmStart.experiments[0]: no saved experiment in nas-results/nothing-here" in refused.stderr
