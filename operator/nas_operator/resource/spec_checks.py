"""Turning a raw NASExperiment document into a checked spec, or into every problem it has.

Two passes: pydantic checks shape and types; then the rules between fields run over the
typed spec. Each problem names its field path (`spec.objectives[1].threshold`) and the rule
it breaks, so `nasctl validate`, the operator's InvalidSpec condition and the API server's
CEL messages all read the same way.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from nas_operator.resource.spec import NASExperiment, NASExperimentSpec, Parameter

# Placeholders the runtime fills in besides parameter names.
RESERVED_PLACEHOLDERS = frozenset({"trial_dir", "log_dir", "trial_index", "trial_name", "experiment"})
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_OUTCOME = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*({_NUMBER})\s*$")
_TERM = re.compile(rf"\s*([-+]?)\s*(?:({_NUMBER})\s*\*?\s*)?([A-Za-z_][A-Za-z0-9_]*)?\s*")


@dataclass(frozen=True)
class Problem:
    """One broken rule: where (a field path) and what."""

    path: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}"


class SpecError(ValueError):
    """A spec with one or more problems; the message lists all of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class OutcomeConstraint:
    metric: str
    op: str  # "<=" or ">="
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class LinearConstraint:
    """sum(coefficient * parameter) <= bound, the one form the model needs."""

    coefficients: dict[str, float]
    bound: float

    def __str__(self) -> str:
        terms = " + ".join(f"{c:g}*{n}" for n, c in self.coefficients.items())
        return f"{terms} <= {self.bound:g}"


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration given as a number or a Go-style string ("1h30m")."""
    if isinstance(value, bool):
        raise ValueError("must be a duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f'"{value}" is not a duration such as "90s", "15m" or "1h30m"')
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError("must be a positive duration")
    return seconds


def parse_outcome_constraint(text: str) -> OutcomeConstraint:
    match = _OUTCOME.match(text)
    if not match:
        raise ValueError(f'"{text}" is not of the form "metric <= number" or "metric >= number"')
    return OutcomeConstraint(match.group(1), match.group(2), float(match.group(3)))


def _parse_linear_side(text: str) -> tuple[dict[str, float], float]:
    """Coefficients and constant of one side of a linear (in)equality."""
    coefficients: dict[str, float] = {}
    constant = 0.0
    position = 0
    text = text.strip()
    if not text:
        raise ValueError("an empty side")
    first = True
    while position < len(text):
        match = _TERM.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f'cannot read "{text[position:]}"')
        sign, number, name = match.groups()
        if not first and not sign:
            raise ValueError(f'expected + or - before "{text[position:].strip()}"')
        if number is None and name is None:
            raise ValueError(f'expected a number or a parameter after "{text[: position + 1].strip()}"')
        factor = -1.0 if sign == "-" else 1.0
        value = factor * (float(number) if number is not None else 1.0)
        if name is None:
            constant += value
        else:
            coefficients[name] = coefficients.get(name, 0.0) + value
        position = match.end()
        first = False
    return coefficients, constant


def parse_parameter_constraint(text: str) -> LinearConstraint:
    """Parse "a + 2*b <= c + 10" (either direction) into sum(coef*name) <= bound."""
    if text.count("<=") + text.count(">=") != 1:
        raise ValueError(f'"{text}" must contain exactly one "<=" or ">="')
    op = "<=" if "<=" in text else ">="
    left_text, right_text = text.split(op)
    try:
        left, left_const = _parse_linear_side(left_text)
        right, right_const = _parse_linear_side(right_text)
    except ValueError as exc:
        raise ValueError(f'"{text}": {exc}') from None
    if op == ">=":
        left, right, left_const, right_const = right, left, right_const, left_const
    coefficients = dict(left)
    for name, coefficient in right.items():
        coefficients[name] = coefficients.get(name, 0.0) - coefficient
    coefficients = {n: c for n, c in coefficients.items() if c != 0.0}
    if not coefficients:
        raise ValueError(f'"{text}" names no parameter')
    return LinearConstraint(coefficients, right_const - left_const)


def placeholders(template: str) -> list[str]:
    """Names in `{name}` fields of a template; `{{` and `}}` are literal braces."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ValueError(f'"{template}": {exc}') from None


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problems.append(Problem(path or "(document)", item["msg"]))
    return problems


def _check_parameter(p: Parameter, path: str) -> Iterable[Problem]:
    if not NAME_PATTERN.match(p.name):
        yield Problem(f"{path}.name", f'"{p.name}" must be a letter or _ followed by letters, digits or _')
    if p.name in RESERVED_PLACEHOLDERS:
        yield Problem(f"{path}.name", f'"{p.name}" is reserved for the runtime\'s own placeholders')
    misplaced = {
        "range": ("values", "ordered", "value"),
        "choice": ("value_type", "lower", "upper", "value"),
        "fixed": ("value_type", "lower", "upper", "values", "ordered"),
    }[p.type]
    for field in misplaced:
        if getattr(p, field) is not None:
            alias = Parameter.model_fields[field].alias or field
            yield Problem(f"{path}.{alias}", f"is not used by a {p.type} parameter")
    if p.type != "range" and p.log_scale:
        yield Problem(f"{path}.logScale", f"is not used by a {p.type} parameter")
    if p.type == "range":
        if p.lower is None:
            yield Problem(f"{path}.lower", "is required for a range parameter")
        if p.upper is None:
            yield Problem(f"{path}.upper", "is required for a range parameter")
        if p.lower is None or p.upper is None:
            return
        if p.lower >= p.upper:
            yield Problem(f"{path}.lower", f"must be less than upper ({p.lower:g} >= {p.upper:g})")
        if p.log_scale and p.lower <= 0:
            yield Problem(f"{path}.lower", f"must be > 0 on a log scale (got {p.lower:g})")
        if p.is_int:
            for side, bound in (("lower", p.lower), ("upper", p.upper)):
                if bound != int(bound):
                    yield Problem(f"{path}.{side}", f"must be a whole number for an int parameter (got {bound:g})")
    elif p.type == "choice":
        if p.values is None:
            yield Problem(f"{path}.values", "is required for a choice parameter")
            return
        if len(p.values) < 2:
            yield Problem(f"{path}.values", "must hold at least 2 values (use a fixed parameter for one)")
        if len({repr(v) for v in p.values}) != len(p.values):
            yield Problem(f"{path}.values", "must not repeat a value")
        kinds = {type(v) for v in p.values}
        if len(kinds - {int, float}) and len(kinds) > 1:
            yield Problem(f"{path}.values", "must all be of one type (numbers, strings or booleans)")
    elif p.value is None:
        yield Problem(f"{path}.value", "is required for a fixed parameter")


def _constraint_parameter_problem(p: Parameter | None, name: str) -> str | None:
    """Why a parameter cannot appear in a linear constraint (the model's rules), if it cannot."""
    if p is None:
        return f'"{name}" is not a parameter'
    if p.type == "fixed":
        return f'"{name}" is fixed: a constraint on it is a constant'
    if p.log_scale:
        return f'"{name}" is on a log scale: linear constraints need linear-scale parameters'
    if p.type == "choice":
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in p.values or [])
        if not numeric or p.ordered is False:
            return f'"{name}" must be numeric and ordered to appear in a constraint'
    return None


def _mount_problem(mount: str) -> str | None:
    """Why a TorchX mount string is malformed, if it is (TorchX parses it for real when the Job is built)."""
    fields: dict[str, str] = {}
    for item in mount.split(","):
        key, _, value = item.strip().partition("=")
        fields[key] = value
    if fields.get("type") not in ("bind", "volume", "device"):
        return f'"{mount}": type must be bind, volume or device'
    if not fields.get("src"):
        return f'"{mount}": src is required'
    if fields["type"] != "device" and not fields.get("dst"):
        return f'"{mount}": dst is required'
    return None


def _duplicates(names: Iterable[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def check_spec(spec: NASExperimentSpec, root: str = "spec") -> list[Problem]:
    """Every rule between fields that pydantic's types cannot state."""
    return [
        *_check_parameters(spec, root),
        *_check_metrics(spec, root),
        *_check_budget(spec, root),
        *_check_trial(spec, root),
    ]


def _check_parameters(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    params = {p.name: p for p in spec.parameters}
    for i, p in enumerate(spec.parameters):
        yield from _check_parameter(p, f"{root}.parameters[{i}]")
    for name in sorted(_duplicates(p.name for p in spec.parameters)):
        yield Problem(f"{root}.parameters", f'duplicate parameter name "{name}"')
    if all(p.type == "fixed" for p in spec.parameters):
        yield Problem(f"{root}.parameters", "needs at least one range or choice parameter to search")
    for i, text in enumerate(spec.parameter_constraints):
        path = f"{root}.parameterConstraints[{i}]"
        try:
            constraint = parse_parameter_constraint(text)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        for name in constraint.coefficients:
            problem = _constraint_parameter_problem(params.get(name), name)
            if problem:
                yield Problem(path, problem)


def _check_metrics(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    # Metric names appear in the model's objective expressions; TensorBoard tags may hold anything.
    named = [(f"{root}.objectives[{i}].metric", o.metric) for i, o in enumerate(spec.objectives)]
    named += [(f"{root}.metrics.definitions[{i}].name", d.name) for i, d in enumerate(spec.metrics.definitions)]
    for path, name in named:
        if not NAME_PATTERN.match(name):
            yield Problem(
                path,
                f'"{name}" must be a letter or _ followed by letters, digits or _ '
                "(map a tag such as val/acc to it in metrics.definitions)",
            )
    objective_metrics = [o.metric for o in spec.objectives]
    for name in sorted(_duplicates(objective_metrics)):
        yield Problem(f"{root}.objectives", f'metric "{name}" appears in more than one objective')
    for i, objective in enumerate(spec.objectives):
        if objective.threshold is not None and not math.isfinite(objective.threshold):
            yield Problem(f"{root}.objectives[{i}].threshold", "must be a finite number")
    defined = [d.name for d in spec.metrics.definitions]
    for name in sorted(_duplicates(defined)):
        yield Problem(f"{root}.metrics.definitions", f'duplicate metric "{name}"')
    known_metrics = set(defined) | set(objective_metrics)
    constrained: list[str] = []
    for i, text in enumerate(spec.outcome_constraints):
        path = f"{root}.outcomeConstraints[{i}]"
        try:
            outcome = parse_outcome_constraint(text)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        constrained.append(outcome.metric)
        if outcome.metric in objective_metrics:
            yield Problem(path, f'"{outcome.metric}" is an objective: give its bound as the objective\'s threshold')
        elif outcome.metric not in known_metrics:
            yield Problem(path, f'unknown metric "{outcome.metric}": declare it in {root}.metrics.definitions')
    for name in sorted(_duplicates(constrained)):
        yield Problem(f"{root}.outcomeConstraints", f'metric "{name}" is constrained more than once')


def _check_budget(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    budget = spec.budget
    for field, alias in (("max_duration", "maxDuration"), ("trial_timeout", "trialTimeout")):
        value = getattr(budget, field)
        if value is not None:
            try:
                parse_duration(value)
            except ValueError as exc:
                yield Problem(f"{root}.budget.{alias}", str(exc))
    if budget.parallelism > budget.max_trials:
        yield Problem(
            f"{root}.budget.parallelism", f"must not exceed maxTrials ({budget.parallelism} > {budget.max_trials})"
        )
    initial = spec.algorithm.initial_trials
    if initial is not None and initial > budget.max_trials:
        yield Problem(
            f"{root}.budget.maxTrials", f"must be at least algorithm.initialTrials ({budget.max_trials} < {initial})"
        )
    if spec.storage.type == "sql" and spec.storage.secret_ref is None:
        yield Problem(f"{root}.storage.secretRef", "is required when storage.type is sql")


def _check_trial(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    allowed = {p.name for p in spec.parameters} | RESERVED_PLACEHOLDERS
    templates = [("command", i, t) for i, t in enumerate(spec.trial.command)]
    templates += [("args", i, t) for i, t in enumerate(spec.trial.args)]
    templates += [("env", i, e.value) for i, e in enumerate(spec.trial.env)]
    for field, i, template in templates:
        path = f"{root}.trial.{field}[{i}]" + (".value" if field == "env" else "")
        try:
            names = placeholders(template)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        for name in names:
            if name not in allowed:
                yield Problem(path, f'placeholder "{{{name}}}" names no parameter')
    for i, mount in enumerate(spec.trial.mounts):
        problem = _mount_problem(mount)
        if problem:
            yield Problem(f"{root}.trial.mounts[{i}]", problem)
    for name in sorted(_duplicates(e.name for e in spec.trial.env)):
        yield Problem(f"{root}.trial.env", f'duplicate variable "{name}"')


def load_experiment(document: Mapping[str, Any]) -> NASExperiment:
    """A checked NASExperiment, or SpecError listing every problem with its path."""
    try:
        experiment = NASExperiment.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(exc)) from None
    problems = check_spec(experiment.spec)
    if not NAME_RFC1123.match(experiment.metadata.name):
        problems.insert(
            0,
            Problem(
                "metadata.name",
                "must be a lowercase RFC 1123 name (a-z, 0-9, '-'), at most 52 characters",
            ),
        )
    if problems:
        raise SpecError(problems)
    return experiment


def load_spec(document: Mapping[str, Any]) -> NASExperimentSpec:
    """A checked spec alone (the `spec:` part of the resource), as the operator receives it."""
    try:
        spec = NASExperimentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError([Problem(f"spec.{p.path}", p.rule) for p in _pydantic_problems(exc)]) from None
    problems = check_spec(spec)
    if problems:
        raise SpecError(problems)
    return spec


# Job names are "<experiment>-t<index>" and must stay within 63 characters.
NAME_RFC1123 = re.compile(r"^(?=.{1,52}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
