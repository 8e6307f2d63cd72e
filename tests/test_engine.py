"""The Ax engine, for real: Sobol and qLogNEHVI on small budgets, constraints, pending trials, snapshots."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import Candidate, Engine, TrialOutcome

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


def _table(engine: Engine) -> dict[int, TrialOutcome]:
    """The trial table the test keeps beside an engine (on the engine itself: an id() is reused once it is freed)."""
    table: dict[int, TrialOutcome] = engine.__dict__.setdefault("_test_table", {})
    return table


def _generate(engine: Engine, size: int) -> list[Candidate]:
    candidates = engine.generate(size)
    for c in candidates:
        _table(engine)[c.index] = TrialOutcome(c.index, c.parameters, c.generator, "pending")
    return candidates


def _complete(engine: Engine, c: Candidate, metrics: dict[str, float]) -> None:
    engine.complete(c.index, metrics)
    _table(engine)[c.index] = TrialOutcome(c.index, c.parameters, c.generator, "completed", metrics)


def _drive(engine: Engine, batches: int, size: int = 2, rounded: bool = False) -> list[Any]:
    proposed = []
    for _ in range(batches):
        candidates = _generate(engine, size)
        for c in candidates:
            metrics = _branin_currin(c.parameters["x"], c.parameters["y"])
            _complete(engine, c, {k: round(v, 6) for k, v in metrics.items()} if rounded else metrics)
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


@pytest.mark.parametrize("algorithm", ["sobol", "qnehvi"])
def test_snapshot_restores_the_same_state_and_the_same_next_candidates(algorithm: str) -> None:
    spec = _toy(algorithm, initial=4)
    engine = Engine.create(spec, "toy")
    _drive(engine, batches=2 if algorithm == "qnehvi" else 3)
    pending = _generate(engine, 1)  # a running trial is part of the state too
    snapshot = json.loads(json.dumps(engine.snapshot()))
    assert len(json.dumps(snapshot)) < 1000  # the trials are the table's; the snapshot only says where generation is
    table = list(_table(engine).values())
    restored = Engine.restore(spec, snapshot, table)
    assert json.loads(json.dumps(restored.snapshot())) == snapshot
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
        again = Engine.restore(spec, snapshot, table).generate(2)
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
    stopped, without_data = _generate(engine, 2)
    engine.early_stop(stopped.index, {"f1": 0.9, "f2": 0.95})
    engine.early_stop(without_data.index, {})  # nothing logged yet: nothing to fit, only never proposed again
    statuses = engine.trial_statuses()
    assert statuses[stopped.index] == "EARLY_STOPPED" and statuses[without_data.index] == "ABANDONED"
    table = _table(engine)
    table[stopped.index] = TrialOutcome(
        stopped.index, stopped.parameters, "MBM", "early_stopped", {"f1": 0.9, "f2": 0.95}
    )
    table[without_data.index] = TrialOutcome(without_data.index, without_data.parameters, "MBM", "early_stopped")
    restored = Engine.restore(engine.spec, engine.snapshot(), table.values())
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
        engine.complete(
            candidate.index, _branin_currin(float(candidate.parameters["x"]), float(candidate.parameters["y"]))
        )
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


def test_an_engine_rebuilt_from_the_table_proposes_what_a_restore_of_axs_whole_snapshot_proposes() -> None:
    """The table holds everything the model needs: same statuses, same data, same next candidates as Ax's JSON.

    Covers each way a trial ends (completed, failed, early-stopped with and without data, pending).
    """
    from nas_operator.search.engine import AX_DEFAULT_MODEL, LEGACY_SNAPSHOT_FORMAT

    spec = _toy("qnehvi", initial=4)
    # Ax's configuration, which its JSON encoder can write (ours holds a model class and memory of its own)
    engine = Engine.create(spec, "toy", model=AX_DEFAULT_MODEL)
    _drive(engine, batches=2, rounded=True)  # Ax's JSON keeps 10 decimals of each value: make that lossless
    table = _table(engine)
    failed, stopped, unlogged, pending = _generate(engine, 4)
    engine.fail(failed.index, "exit code 1")
    table[failed.index] = TrialOutcome(
        failed.index, failed.parameters, failed.generator, "failed", reason="exit code 1"
    )
    engine.early_stop(stopped.index, {"f1": 0.8, "f2": 0.9})
    table[stopped.index] = TrialOutcome(
        stopped.index, stopped.parameters, "MBM", "early_stopped", {"f1": 0.8, "f2": 0.9}
    )
    engine.early_stop(unlogged.index, {})
    table[unlogged.index] = TrialOutcome(unlogged.index, unlogged.parameters, "MBM", "early_stopped")
    assert pending.index in table

    legacy = Engine.restore(spec, {"format": LEGACY_SNAPSHOT_FORMAT, "client": engine.client._to_json_snapshot()}, [])
    rebuilt = Engine.restore(spec, json.loads(json.dumps(engine.snapshot())), table.values(), model=AX_DEFAULT_MODEL)
    assert rebuilt.trial_statuses() == legacy.trial_statuses() == engine.trial_statuses()
    assert rebuilt.generation_strategy_name == legacy.generation_strategy_name
    data = rebuilt.client._experiment.lookup_data().df.sort_values(["trial_index", "metric_name"])
    expected = legacy.client._experiment.lookup_data().df.sort_values(["trial_index", "metric_name"])
    assert (
        data[["trial_index", "metric_name"]].values.tolist() == expected[["trial_index", "metric_name"]].values.tolist()
    )
    assert data["mean"].tolist() == pytest.approx(expected["mean"].tolist(), rel=1e-12)
    first, second = rebuilt.generate(2)
    expected_first, expected_second = legacy.generate(2)
    assert (first.index, first.generator, second.index, second.generator) == (
        expected_first.index,
        expected_first.generator,
        expected_second.index,
        expected_second.generator,
    )
    # Same data and pending points, so the same model and the same first optimum (to rounding: the two experiments
    # hold their frames in different orders). The second candidate is optimized with the first as a pending point;
    # there a 1e-14 difference can already pick another of two near-equal local optima, so only its origin is compared.
    assert first.parameters == pytest.approx(expected_first.parameters, rel=1e-6, abs=1e-9)


def test_sobol_continues_exactly_after_skipping_duplicates_in_a_discrete_space() -> None:
    """Sobol's draw count (duplicates skipped included) is in the snapshot: the count of trials would not say it."""
    doc = toy_doc(maxTrials=12, parallelism=2)
    doc["spec"]["parameters"] = [
        {"name": "x", "type": "choice", "values": [0.0, 0.5, 1.0]},
        {"name": "y", "type": "choice", "values": [0.0, 1.0]},
    ]
    doc["spec"]["algorithm"] = {"name": "sobol", "seed": 5}
    spec = load_experiment(doc).spec
    engine = Engine.create(spec, "toy")
    _drive(engine, batches=2)
    draws = engine.snapshot()["nodes"]["Sobol"]["state"]["init_position"]
    assert draws > 4  # duplicates were skipped
    rebuilt = Engine.restore(spec, engine.snapshot(), _table(engine).values())
    assert [c.parameters for c in rebuilt.generate(2)] == [c.parameters for c in engine.generate(2)]


def test_an_index_dropped_from_the_table_is_kept_by_an_abandoned_placeholder() -> None:
    """Lowering maxTrials drops queued candidates from the table: later trials keep their indices after a restore."""
    spec = _toy("sobol")
    engine = Engine.create(spec, "toy")
    _drive(engine, batches=1)
    dropped, kept = _generate(engine, 2)
    engine.abandon(dropped.index)
    del _table(engine)[dropped.index]
    rebuilt = Engine.restore(spec, engine.snapshot(), _table(engine).values())
    assert rebuilt.trial_statuses() == {
        0: "COMPLETED",
        1: "COMPLETED",
        dropped.index: "ABANDONED",
        kept.index: "RUNNING",
    }
    assert [c.index for c in rebuilt.generate(1)] == [kept.index + 1]


def test_the_tuned_model_node_also_proposes_while_no_observation_is_feasible() -> None:
    """Ax switches to qLogProbabilityOfFeasibility until some observation meets every threshold; our options fit it."""
    doc = toy_doc(maxTrials=12, parallelism=2)
    doc["spec"]["objectives"] = [
        {"metric": "f1", "goal": "minimize", "threshold": 0.001},
        {"metric": "f2", "goal": "minimize", "threshold": 0.001},
    ]
    doc["spec"]["algorithm"] = {"name": "qnehvi", "initialTrials": 4, "seed": 3}
    engine = Engine.create(load_experiment(doc).spec, "toy")
    _drive(engine, batches=2)  # Branin-Currin's scaled values are far above 0.001: nothing is feasible
    candidates = engine.generate(2)
    assert [c.generator for c in candidates] == ["MBM", "MBM"]


def _model_config(engine: Engine) -> Any:
    spec = engine.client._generation_strategy.nodes_by_name["MBM"].generator_specs[0]
    surrogate = spec.generator_kwargs.get("surrogate_spec")
    return surrogate.model_configs[0] if surrogate is not None else None


def test_each_model_fit_starts_from_the_previous_fits_hyperparameters() -> None:
    engine = Engine.create(_toy("qnehvi", initial=4), "toy")
    _drive(engine, batches=4)  # two model calls after the four initial trials
    memory = _model_config(engine).model_options["memory"]
    assert memory.warm_starts >= 1
    fitted = engine.client._generation_strategy.adapter.generator.surrogate.model
    assert type(fitted).__name__ == "EngineSingleTaskGP"


def test_warm_start_loads_only_parameters_whose_shapes_agree() -> None:
    import torch

    from nas_operator.search.single_task_gp import EngineSingleTaskGP
    from nas_operator.search.warm_start import HyperparameterMemory

    memory = HyperparameterMemory()
    x, y = torch.rand(8, 2, dtype=torch.float64), torch.rand(8, 1, dtype=torch.float64)
    first = EngineSingleTaskGP(x, y, memory=memory)
    with torch.no_grad():
        first.covar_module.raw_lengthscale.fill_(0.7)
    second = EngineSingleTaskGP(
        torch.rand(9, 2, dtype=torch.float64), torch.rand(9, 1, dtype=torch.float64), memory=memory
    )
    assert torch.all(second.covar_module.raw_lengthscale == 0.7) and memory.warm_starts == 1
    third = EngineSingleTaskGP(
        torch.rand(9, 3, dtype=torch.float64), torch.rand(9, 1, dtype=torch.float64), memory=memory
    )
    assert third.covar_module.raw_lengthscale.shape[-1] == 3  # another dimension: nothing to load, starts cold
    assert not torch.all(third.covar_module.raw_lengthscale == 0.7)


def test_a_space_with_categories_keeps_axs_model_choice() -> None:
    doc = toy_doc(maxTrials=12, parallelism=2)
    doc["spec"]["parameters"].append({"name": "act", "type": "choice", "values": ["relu", "tanh", "gelu"]})
    doc["spec"]["algorithm"] = {"name": "qnehvi", "initialTrials": 4, "seed": 3}
    engine = Engine.create(load_experiment(doc).spec, "toy")
    config = _model_config(engine)
    assert config is None or config.botorch_model_class is None


def test_a_result_without_every_modelled_metric_does_not_keep_the_experiment_from_restoring() -> None:
    spec = _toy("sobol")
    engine = Engine.create(spec, "toy")
    _drive(engine, batches=1)
    table = _table(engine)
    table[1] = TrialOutcome(1, table[1].parameters, table[1].generator, "completed", {"f1": 0.5})  # f2 lost
    rebuilt = Engine.restore(spec, engine.snapshot(), table.values())
    assert rebuilt.trial_statuses() == {0: "COMPLETED", 1: "ABANDONED"}


def test_past_the_training_limit_the_gp_and_the_baseline_see_the_subset_and_restores_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nas_operator.search.engine import ModelSettings
    from nas_operator.search.training_subset import TrainingSubset

    baselines: list[tuple[int, int]] = []
    original = TrainingSubset.baseline

    def recorded(self: TrainingSubset, X_observed: Any, models: Any) -> Any:
        baseline = original(self, X_observed, models)
        baselines.append((X_observed.shape[-2], baseline.shape[-2]))
        return baseline

    monkeypatch.setattr(TrainingSubset, "baseline", recorded)

    spec = _toy("qnehvi", initial=4)
    model = ModelSettings(training_limit=6)
    engine = Engine.create(spec, "toy", model=model)
    proposed = _drive(engine, batches=5)  # 10 observations, the last model calls past the limit of 6
    assert [c.generator for c in proposed[-4:]] == ["MBM"] * 4
    surrogate = engine.client._generation_strategy.adapter.generator.surrogate
    assert surrogate.model.train_inputs[0].shape[-2] == 6  # fitted on the subset ...
    assert sum(x.shape[-2] for x in surrogate.Xs[:1]) == 8  # ... of the 8 it was given
    subset = _model_config(engine).model_options["subset"]
    kept = subset.kept[("f1", "f2")]
    assert kept is not None and kept.shape[-2] == 6
    assert baselines[-1] == (8, 6)  # qLogNEHVI's baseline: the subset's rows
    acquisition = engine.client._generation_strategy.adapter.generator._acquisition
    assert acquisition.X_observed.shape[-2] == 8  # the optimizer still avoids every observed point
    snapshot = json.loads(json.dumps(engine.snapshot()))
    table = list(_table(engine).values())
    first = Engine.restore(spec, snapshot, table, model=model).generate(2)
    again = Engine.restore(spec, snapshot, table, model=model).generate(2)
    assert [c.generator for c in first] == ["MBM", "MBM"]
    for a, b in zip(first, again, strict=True):
        assert a.parameters == pytest.approx(b.parameters, rel=1e-9, abs=1e-12)


def test_past_the_training_limit_a_model_per_outcome_works_too() -> None:
    """An early-stopped trial that logged only f1: Ax fits one model per outcome; each gets its subset."""
    from nas_operator.search.engine import ModelSettings

    engine = Engine.create(_toy("qnehvi", initial=4), "toy", model=ModelSettings(training_limit=6))
    _drive(engine, batches=3)
    stopped = _generate(engine, 1)[0]
    engine.early_stop(stopped.index, {"f1": 0.5})
    _drive(engine, batches=1)
    candidates = _generate(engine, 2)
    assert [c.generator for c in candidates] == ["MBM", "MBM"]
    subset = _model_config(engine).model_options["subset"]
    kept = [subset.kept.get(("f1",)), subset.kept.get(("f2",))]
    assert all(k is not None and k.shape[-2] == 6 for k in kept), subset.kept
