"""The Ax engine, for real: Sobol and qLogNEHVI on small budgets, constraints, pending trials, snapshots."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import Engine

from .conftest import EXAMPLES, load_yaml, toy_doc

pytestmark = pytest.mark.engine


def _branin_currin(x: float, y: float) -> dict[str, float]:
    """A cheap 2-objective problem (both minimized, values scaled to about [0, 1])."""
    a, b = 15 * x - 5, 15 * y
    branin = (
        (b - 5.1 / (4 * math.pi**2) * a**2 + 5 / math.pi * a - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(a) + 10
    )
    currin = (
        (1 - math.exp(-1 / (2 * y + 1e-9)))
        * (2300 * x**3 + 1900 * x**2 + 2092 * x + 60)
        / (100 * x**3 + 500 * x**2 + 4 * x + 20)
    )
    return {"f1": branin / 300.0, "f2": currin / 14.0}


def _toy(algorithm: str = "qnehvi", initial: int = 4) -> NASExperimentSpec:
    doc = toy_doc(maxTrials=12, parallelism=2)
    doc["spec"]["algorithm"] = {"name": algorithm, "initialTrials": initial, "seed": 3}
    return load_experiment(doc).spec


def _digits() -> NASExperimentSpec:
    doc = load_yaml(EXAMPLES / "digits-mlp-latency.yaml")  # has hidden_size_2 <= hidden_size_1
    doc["spec"]["parameters"].append({"name": "optimizer", "type": "fixed", "value": "adam"})
    return load_experiment(doc).spec


def test_candidates_honour_bounds_types_constraints_and_fixed_values() -> None:
    spec = _digits()
    engine = Engine.create(spec, "digits")
    candidates = engine.generate(8)
    assert [c.index for c in candidates] == list(range(8))
    for c in candidates:
        p = c.parameters
        assert isinstance(p["hidden_size_1"], int) and 4 <= p["hidden_size_1"] <= 128
        assert p["hidden_size_2"] <= p["hidden_size_1"]
        assert 1e-4 <= p["learning_rate"] <= 0.1
        assert p["batch_size"] in (16, 32, 64, 128)
        assert p["optimizer"] == "adam"
    assert len({json.dumps(c.parameters, sort_keys=True) for c in candidates}) == 8


def test_pending_trials_are_not_proposed_again() -> None:
    engine = Engine.create(_toy("sobol"), "toy")
    first = engine.generate(3)
    second = engine.generate(3)
    assert {c.index for c in first}.isdisjoint(c.index for c in second)
    points = {(c.parameters["x"], c.parameters["y"]) for c in first + second}
    assert len(points) == 6


def _drive(engine: Engine, batches: int, size: int = 2) -> list[Any]:
    proposed = []
    for _ in range(batches):
        candidates = engine.generate(size)
        for c in candidates:
            engine.complete(c.index, _branin_currin(c.parameters["x"], c.parameters["y"]))
        proposed.extend(candidates)
    return proposed


def test_model_takes_over_after_initial_trials_and_statuses_follow() -> None:
    engine = Engine.create(_toy("qnehvi", initial=4), "toy")
    proposed = _drive(engine, batches=3)
    generators = [c.generator for c in proposed]
    assert generators[:4] == ["CenterOfSearchSpace", "Sobol", "Sobol", "Sobol"]
    assert generators[4:] == ["MBM", "MBM"]
    failing, abandoned = engine.generate(2)
    engine.fail(failing.index, "exit code 1")
    engine.abandon(abandoned.index)
    statuses = engine.trial_statuses()
    assert statuses[failing.index] == "FAILED" and statuses[abandoned.index] == "ABANDONED"
    assert list(statuses.values()).count("COMPLETED") == 6


def test_complete_requires_every_modelled_metric() -> None:
    engine = Engine.create(_toy("sobol"), "toy")
    (c,) = engine.generate(1)
    with pytest.raises(ValueError, match="lacks metrics"):
        engine.complete(c.index, {"f1": 1.0})


def _stable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without Ax's in-memory flag saying whether a model object is currently built."""
    snapshot["client"]["generation_strategy"].pop("had_initialized_model", None)
    return snapshot


@pytest.mark.parametrize("algorithm", ["sobol", "qnehvi"])
def test_snapshot_restores_the_same_state_and_the_same_next_candidates(algorithm: str) -> None:
    spec = _toy(algorithm, initial=4)
    engine = Engine.create(spec, "toy")
    _drive(engine, batches=2 if algorithm == "qnehvi" else 3)
    pending = engine.generate(1)  # a running trial is part of the state too
    snapshot = json.loads(json.dumps(engine.snapshot()))
    restored = Engine.restore(spec, snapshot)
    assert _stable(json.loads(json.dumps(restored.snapshot()))) == _stable(snapshot)
    assert restored.trial_statuses() == engine.trial_statuses()
    original_next = engine.generate(2)
    restored_next = restored.generate(2)
    assert (
        [c.index for c in restored_next]
        == [c.index for c in original_next]
        == [pending[0].index + 1, pending[0].index + 2]
    )
    for a, b in zip(original_next, restored_next, strict=True):
        assert a.generator == b.generator
        if algorithm == "sobol":  # the quasi-random sequence continues exactly
            assert a.parameters == b.parameters
    if algorithm == "qnehvi":
        # The original engine warm-starts its GP fit from the previous one (in memory only, not in the
        # snapshot), so its optimum can differ from a cold fit's; but restoring is deterministic: two
        # restores of one snapshot propose the same candidates, whatever process does it.
        again = Engine.restore(spec, snapshot).generate(2)
        for a, b in zip(again, restored_next, strict=True):
            assert a.parameters == pytest.approx(b.parameters, rel=1e-9, abs=1e-12)


def test_attached_results_are_completed_trials_but_not_the_initialization() -> None:
    spec = _toy("qnehvi", initial=2)
    engine = Engine.create(spec, "toy")
    points = [(0.1, 0.9), (0.5, 0.5), (0.9, 0.1), (0.3, 0.3), (0.7, 0.6)]
    indices = [engine.attach({"x": x, "y": y}, {"f1": x, "f2": 1.0 - x + y}) for x, y in points]
    assert indices == [0, 1, 2, 3, 4]
    assert set(engine.trial_statuses().values()) == {"COMPLETED"}
    # Ax runs its own quasi-random initialization all the same, then the model takes over
    generators = []
    for _ in range(3):
        (c,) = engine.generate(1)
        generators.append(c.generator)
        engine.complete(c.index, {"f1": c.parameters["x"], "f2": c.parameters["y"]})
    assert generators[0] == "Sobol" and generators[-1] == "MBM", generators
    with pytest.raises(ValueError, match="lacks metrics"):
        engine.attach({"x": 0.2, "y": 0.2}, {"f1": 0.2})


def test_an_early_stopped_trial_is_fitted_with_its_projection_and_never_proposed_again() -> None:
    engine = Engine.create(_toy("qnehvi", initial=4), "toy")
    _drive(engine, batches=2)  # the four initial trials, completed
    stopped, without_data = engine.generate(2)
    engine.early_stop(stopped.index, {"f1": 0.9, "f2": 0.95})
    engine.early_stop(without_data.index, {})  # nothing logged yet: nothing to fit, only never proposed again
    statuses = engine.trial_statuses()
    assert statuses[stopped.index] == "EARLY_STOPPED" and statuses[without_data.index] == "ABANDONED"
    restored = Engine.restore(engine.spec, engine.snapshot())
    assert restored.trial_statuses() == statuses
    nxt = restored.generate(1)[0]
    assert nxt.generator == "MBM" and nxt.parameters != stopped.parameters
    fitted = restored.client._generation_strategy.adapter.get_training_data().observation_data
    rows = {index for index, _ in fitted.index}
    assert stopped.index in rows and without_data.index not in rows  # the model saw the projected values
    assert fitted.loc[stopped.index]["mean"]["f1"].item() == pytest.approx(0.9)


def _saasbo_after_initial_trials() -> Engine:
    spec = _toy("saasbo", initial=4)
    engine = Engine.create(spec, "toy")
    for candidate in engine.generate(4):
        engine.complete(candidate.index, _branin_currin(float(candidate.parameters["x"]), float(candidate.parameters["y"])))
    return engine


def test_saasbo_fits_and_proposes_after_the_initial_trials() -> None:
    """The fully Bayesian model's packages (JAX, NumPyro) are part of the environment: SAASBO gets past Sobol."""
    candidates = _saasbo_after_initial_trials().generate(2)
    assert [c.generator for c in candidates] == ["MBM", "MBM"]
    for c in candidates:
        assert 0.0 <= float(c.parameters["x"]) <= 1.0 and 0.0 <= float(c.parameters["y"]) <= 1.0


def test_a_missing_model_package_is_a_generation_error_that_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nas_operator.search.engine import GenerationError

    engine = _saasbo_after_initial_trials()
    for module in ("jax", "numpyro"):  # an installation without botorch[fully-bayesian]
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(GenerationError, match=r"JAX and NumPyro .*set spec.algorithm.name to qnehvi"):
        engine.generate(2)
