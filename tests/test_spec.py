"""The spec: valid examples load, and each kind of mistake is refused with its field path and rule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nas_operator.cli import main
from nas_operator.resource.quantities import cpu_cores, memory_bytes, parse_quantity
from nas_operator.resource.spec_checks import (
    SpecError,
    ax_infers_log_scale,
    load_experiment,
    load_spec,
    parse_duration,
    parse_outcome_constraint,
    parse_parameter_constraint,
    placeholders,
)

from .conftest import EXAMPLES, load_yaml


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    experiment = load_experiment(load_yaml(path))
    assert len(experiment.spec.objectives) >= 2


def _problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_experiment(document)
    return [str(p) for p in info.value.problems]


def _param(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in doc["spec"]["parameters"] if p["name"] == name)


Mutation = Callable[[dict[str, Any]], None]
BAD_SPECS: list[tuple[str, Mutation, str]] = [
    (
        "unknown metric in a constraint",
        lambda d: d["spec"].__setitem__("outcomeConstraints", ["latency_ms <= 5"]),
        'spec.outcomeConstraints[0]: unknown metric "latency_ms"',
    ),
    (
        "constraint on an objective",
        lambda d: d["spec"].__setitem__("outcomeConstraints", ["val_acc >= 0.5"]),
        'spec.outcomeConstraints[0]: "val_acc" is an objective',
    ),
    (
        "malformed outcome constraint",
        lambda d: d["spec"].__setitem__("outcomeConstraints", ["latency_p99_ms < 5"]),
        'spec.outcomeConstraints[0]: "latency_p99_ms < 5" is not of the form',
    ),
    (
        "lower >= upper",
        lambda d: _param(d, "epochs").update(lower=40, upper=5),
        "spec.parameters[3].lower: must be less than upper (40 >= 5)",
    ),
    (
        "log scale with a bound <= 0",
        lambda d: _param(d, "dropout").update(logScale=True),
        "spec.parameters[4].lower: must be > 0 on a log scale (got 0)",
    ),
    (
        "a choice with one value",
        lambda d: _param(d, "batch_size").update(values=[32]),
        "spec.parameters[5].values: must hold at least 2 values",
    ),
    (
        "a choice repeating a value",
        lambda d: _param(d, "batch_size").update(values=[32, 32, 64]),
        "spec.parameters[5].values: must not repeat a value",
    ),
    (
        "budget smaller than the initial trials",
        lambda d: d["spec"]["budget"].update(maxTrials=4, parallelism=2),
        "spec.budget.maxTrials: must be at least algorithm.initialTrials (4 < 8)",
    ),
    (
        "parallelism above the budget",
        lambda d: d["spec"]["budget"].update(parallelism=100, maxTrials=30),
        "spec.budget.parallelism: must not exceed maxTrials (100 > 30)",
    ),
    (
        "duplicate parameter names",
        lambda d: d["spec"]["parameters"].append(dict(_param(d, "dropout"))),
        'spec.parameters: duplicate parameter name "dropout"',
    ),
    (
        "duplicate objectives",
        lambda d: d["spec"]["objectives"].append({"metric": "val_acc", "goal": "minimize"}),
        'spec.objectives: metric "val_acc" appears in more than one objective',
    ),
    (
        "duplicate metric definitions",
        lambda d: d["spec"]["metrics"]["definitions"].append({"name": "val_acc"}),
        'spec.metrics.definitions: duplicate metric "val_acc"',
    ),
    (
        "a placeholder naming no parameter",
        lambda d: d["spec"]["trial"]["args"].append("--width={hidden_size_3}"),
        'spec.trial.args[8]: placeholder "{hidden_size_3}" names no parameter',
    ),
    (
        "a placeholder in env naming no parameter",
        lambda d: d["spec"]["trial"]["env"].append({"name": "X", "value": "{nope}"}),
        'spec.trial.env[1].value: placeholder "{nope}" names no parameter',
    ),
    (
        "constraint on an unknown parameter",
        lambda d: d["spec"].__setitem__("parameterConstraints", ["hidden_size_3 <= hidden_size_1"]),
        'spec.parameterConstraints[0]: "hidden_size_3" is not a parameter',
    ),
    (
        "constraint on a log-scale parameter",
        lambda d: d["spec"].__setitem__("parameterConstraints", ["learning_rate <= 0.01"]),
        'spec.parameterConstraints[0]: "learning_rate" is on a log scale',
    ),
    (
        "unreadable parameter constraint",
        lambda d: d["spec"].__setitem__("parameterConstraints", ["hidden_size_2 hidden_size_1 <= 3"]),
        "spec.parameterConstraints[0]:",
    ),
    (
        "bad duration",
        lambda d: d["spec"]["budget"].update(maxDuration="ten minutes"),
        'spec.budget.maxDuration: "ten minutes" is not a duration',
    ),
    (
        "failure rate above 1",
        lambda d: d["spec"]["budget"].update(maxFailureRate=1.5),
        "spec.budget.maxFailureRate: Input should be less than or equal to 1",
    ),
    (
        "unknown goal",
        lambda d: d["spec"]["objectives"][0].update(goal="maximise"),
        "spec.objectives[0].goal: Input should be 'maximize' or 'minimize'",
    ),
    (
        "unknown field (a typo)",
        lambda d: d["spec"]["budget"].update(maxTrial=3),
        "spec.budget.maxTrial: Extra inputs are not permitted",
    ),
    (
        "a range without bounds",
        lambda d: _param(d, "epochs").pop("upper"),
        "spec.parameters[3].upper: is required for a range parameter",
    ),
    (
        "a range field on a choice",
        lambda d: _param(d, "batch_size").update(lower=3),
        "spec.parameters[5].lower: is not used by a choice parameter",
    ),
    (
        "an int range with fractional bounds",
        lambda d: _param(d, "epochs").update(lower=1.5),
        "spec.parameters[3].lower: must be a whole number for an int parameter (got 1.5)",
    ),
    (
        "no objective",
        lambda d: d["spec"].__setitem__("objectives", []),
        "spec.objectives: List should have at least 1 item",
    ),
    (
        "a convergence window of 0",
        lambda d: d["spec"]["budget"].__setitem__("convergence", {"window": 0}),
        "spec.budget.convergence.window: Input should be greater than or equal to 1",
    ),
    (
        "a bad parameter name",
        lambda d: _param(d, "dropout").update(name="drop-out"),
        'spec.parameters[4].name: "drop-out" must be a letter',
    ),
    (
        "a metric name the model cannot parse",
        lambda d: d["spec"]["objectives"][0].update(metric="val/acc"),
        'spec.objectives[0].metric: "val/acc" must be a letter',
    ),
    (
        "a malformed TorchX mount",
        lambda d: d["spec"]["trial"].__setitem__("mounts", ["type=nfs,src=x,dst=/x"]),
        'spec.trial.mounts[0]: "type=nfs,src=x,dst=/x": type must be bind, volume or device',
    ),
    (
        "an invalid experiment name",
        lambda d: d["metadata"].update(name="Digits_MLP"),
        'metadata.name: "Digits_MLP" must be a lowercase RFC 1123 name',
    ),
    (
        "sql storage without a secret",
        lambda d: d["spec"].__setitem__("storage", {"type": "sql"}),
        "spec.storage.secretRef: is required when storage.type is sql",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_its_field(
    digits_doc: dict[str, Any], case: str, mutate: Mutation, expected: str
) -> None:
    mutate(digits_doc)
    problems = _problems(digits_doc)
    assert any(p.startswith(expected) for p in problems), f"{case}: {problems}"


def test_every_problem_is_reported_at_once(digits_doc: dict[str, Any]) -> None:
    _param(digits_doc, "epochs").update(lower=40, upper=5)
    _param(digits_doc, "batch_size").update(values=[32])
    digits_doc["spec"]["outcomeConstraints"] = ["nope <= 1"]
    digits_doc["spec"]["trial"]["args"].append("{missing}")
    problems = _problems(digits_doc)
    assert len(problems) == 4, problems


def test_load_spec_prefixes_paths_for_the_operator(digits_doc: dict[str, Any]) -> None:
    spec = copy.deepcopy(digits_doc["spec"])
    spec["budget"]["maxTrials"] = 0
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value.problems[0]).startswith("spec.budget.maxTrials:")


def test_validate_cli_prints_every_problem(tmp_path: Path, digits_doc: dict[str, Any]) -> None:
    import yaml

    _param(digits_doc, "dropout").update(logScale=True)
    digits_doc["spec"]["outcomeConstraints"] = ["latency <= 5"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(digits_doc))
    result = CliRunner().invoke(main, ["validate", str(EXAMPLES / "digits-mlp.yaml"), str(bad)])
    assert result.exit_code == 1
    assert "digits-mlp.yaml (digits-mlp): valid" in result.output
    assert "2 problem(s)" in result.output
    assert "spec.parameters[4].lower: must be > 0 on a log scale" in result.output
    assert 'spec.outcomeConstraints[0]: unknown metric "latency"' in result.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), (45, 45), ("2.5", 2.5)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "-5", "0", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_linear_constraints() -> None:
    c = parse_parameter_constraint("hidden_size_2 <= hidden_size_1")
    assert c.coefficients == {"hidden_size_2": 1.0, "hidden_size_1": -1.0} and c.bound == 0.0
    c = parse_parameter_constraint("2*a + 0.5 b - 3 >= c + 1")
    assert c.coefficients == {"c": 1.0, "a": -2.0, "b": -0.5} and c.bound == -4.0
    with pytest.raises(ValueError):
        parse_parameter_constraint("a <= b <= c")
    with pytest.raises(ValueError):
        parse_parameter_constraint("3 <= 4")


def test_outcome_constraint_and_placeholders() -> None:
    c = parse_outcome_constraint("latency_p99_ms <= 5e-1")
    assert (c.metric, c.op, c.bound) == ("latency_p99_ms", "<=", 0.5)
    assert placeholders("--x={x} --y={y} {{literal}}") == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "cores", "size"),
    [("500m", 0.5, 1), ("2", 2.0, 2), ("4Gi", 4 * 2**30, 4 * 2**30), ("1e3", 1000.0, 1000), ("1.5Ki", 1536.0, 1536)],
)
def test_quantities_follow_kubernetes_grammar(text: str, cores: float, size: int) -> None:
    assert cpu_cores(text) == cores
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["two", "4 gigs", "4gi", "", "Gi", "1.2.3", "2\n", "\u0663", "1e400"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("template", "rule"),
    [
        ("{x:>4000000000}", "format spec"),
        ("{lr:.3f}", "format spec"),
        ("{x!r}", "conversion"),
        ("{x.a}", "attribute or index"),
        ("{x[0]}", "attribute or index"),
        ("{}", "positional"),
        ("{0}", "positional"),
        ("{a b}", "not a name"),
        ("--json={", 'a "{" that opens no placeholder'),
        ("x}", 'a "}" that closes no placeholder'),
    ],
)
def test_placeholders_are_bare_names_only(template: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        placeholders(template)


def test_literal_braces_stay_literal() -> None:
    assert placeholders("{{x:>9}} {{}} {y}") == ["y"]


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([16, 32, 64, 128], True),
        ([10, 20, 40], True),
        ([1, 10, 100], True),
        ([0.1, 0.2, 0.5], False),
        ([1, 2, 3, 4], False),
        ([2, 4], False),
        ([-1, 1, 2], False),
    ],
)
def test_ax_log_scale_heuristic(values: list[float], log: bool) -> None:
    """Ax (1.3) puts such choices on a log scale itself, and then refuses constraints on them."""
    assert ax_infers_log_scale(values) is log


def _linear_doc(doc: dict[str, Any], constraint: str) -> dict[str, Any]:
    for name in ("hidden_size_1", "hidden_size_2"):
        _param(doc, name)["logScale"] = False
    doc["spec"]["parameterConstraints"] = [constraint]
    return doc


@pytest.mark.parametrize(
    ("constraint", "rule"),
    [
        ("hidden_size_1 + hidden_size_2 <= 2", "no point of the search space satisfies it"),
        ("hidden_size_1 + hidden_size_2 <= 8", "only the boundary"),
        ("1e12*dropout + epochs <= 6", "leaves (almost) no room"),
        ("batch_size <= hidden_size_1", "a choice Ax models on a log scale"),
    ],
)
def test_constraints_ax_refuses(digits_doc: dict[str, Any], constraint: str, rule: str) -> None:
    problems = _problems(_linear_doc(digits_doc, constraint))
    assert any(p.startswith("spec.parameterConstraints") and rule in p for p in problems), problems


def test_constraints_ax_accepts(digits_doc: dict[str, Any]) -> None:
    load_experiment(_linear_doc(digits_doc, "hidden_size_2 <= hidden_size_1"))
    load_experiment(_linear_doc(digits_doc, "0.5*hidden_size_2 + dropout <= hidden_size_1 + 3"))


def test_cluster_needs_are_checked_only_for_a_cluster(digits_doc: dict[str, Any]) -> None:
    digits_doc["spec"]["metrics"].pop("claimName")
    digits_doc["spec"]["trial"].pop("image")
    problems = _problems(digits_doc)
    assert [p.split(":")[0] for p in problems] == ["spec.trial.image", "spec.metrics.claimName"]
    assert load_experiment(digits_doc, cluster=False).spec.trial.image is None


@pytest.mark.parametrize("document", [[], "spec", None, 3])
def test_documents_that_are_not_mappings_are_problems(document: Any) -> None:
    with pytest.raises(SpecError, match=r"^\(document\): must be a mapping"):
        load_experiment(document)
    with pytest.raises(SpecError, match=r"^spec: must be a mapping"):
        load_spec(document)
