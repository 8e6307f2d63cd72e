"""Turning a raw NASExperiment document into a checked spec, or into every problem it has.

Two passes: pydantic checks shape and types; then the rules between fields run over the
typed spec. Each problem names its field path (`spec.objectives[1].threshold`) and the rule
it breaks, so `nasctl validate`, the operator's InvalidSpec condition and the API server's
CEL messages all read the same way.
"""

from __future__ import annotations

import math
import posixpath
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from nas_operator.resource import limits as L
from nas_operator.resource.quantities import memory_bytes, parse_quantity
from nas_operator.resource.spec import NASExperiment, NASExperimentSpec, Parameter, TrialTemplate

if TYPE_CHECKING:
    from nas_operator.resource.policy import TrialPolicy

# Placeholders the runtime fills in besides parameter names.
RESERVED_PLACEHOLDERS = frozenset({"trial_dir", "log_dir", "trial_index", "trial_name", "experiment"})
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The runtime sets NAS_LOG_DIR, NAS_TRIAL_NAME, ...: a spec must not override them.
RESERVED_ENV_PREFIX = "NAS_"
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
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond a float's range
            raise ValueError("must be a positive duration of a sane size") from None
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


def metric_directions(spec: NASExperimentSpec) -> dict[str, bool]:
    """Metric -> whether larger is better, for every objective and every metric an outcome constraint bounds."""
    directions = {o.metric: not o.minimize for o in spec.objectives}
    for text in spec.outcome_constraints:
        constraint = parse_outcome_constraint(text)
        directions.setdefault(constraint.metric, constraint.op == ">=")
    return directions


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


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")


def _field_problem(field: str) -> str | None:
    """Why the text between braces is not a bare placeholder name, if it is not."""
    if NAME_PATTERN.fullmatch(field):
        return None
    shown = _quote("{" + field + "}")
    if ":" in field:
        return (
            f"placeholder {shown} has a format spec: placeholders are bare names such as {{lr}} "
            "(format the value in the trial program)"
        )
    if "!" in field:
        return f"placeholder {shown} has a conversion: placeholders are bare names such as {{lr}}"
    if "." in field or "[" in field:
        return f"placeholder {shown} accesses an attribute or index: placeholders are bare names such as {{lr}}"
    if field.strip() == "" or field.isdigit():
        return f"placeholder {shown} is positional: placeholders name a parameter, such as {{lr}}"
    return f"placeholder {shown} is not a name (a letter or _ followed by letters, digits or _)"


def placeholders(template: str) -> list[str]:
    """Names in `{name}` fields of a template; `{{` and `}}` are literal braces.

    Only bare names: a format spec (`{x:>4000000000}`), a conversion (`{x!r}`), attribute or
    index access (`{x.a}`, `{x[0]}`) and positional fields (`{}`, `{0}`) raise ValueError, so
    that rendering at launch is a plain substitution that can neither fail nor amplify.
    """
    names = []
    for match in _TEMPLATE_TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if token == "{":
            raise ValueError('a "{" that opens no placeholder (write {{ for a literal brace)')
        if token == "}":
            raise ValueError('a "}" that closes no placeholder (write }} for a literal brace)')
        field = match.group(1)
        problem = _field_problem(field)
        if problem:
            raise ValueError(problem)
        names.append(field)
    return names


def _quote(text: str, limit: int = 80) -> str:
    """A user's string for a message: quoted, cut to `limit` characters, control characters escaped."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return '"' + "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut) + '"'


@dataclass(frozen=True)
class Mount:
    """One TorchX mount entry, with TorchX's key aliases resolved."""

    type: str
    src: str
    dst: str | None
    readonly: bool


# TorchX's mount option names and their aliases (torchx.specs.builders._MOUNT_OPT_MAP).
_MOUNT_KEYS = {
    "type": "type",
    "src": "src",
    "source": "src",
    "dst": "dst",
    "destination": "dst",
    "target": "dst",
    "readonly": "readonly",
    "read_only": "readonly",
    "perm": "perm",
}


def parse_mount(text: str) -> Mount:
    """Read one mount entry as TorchX's parse_mounts will (same keys, aliases, no trimming).

    TorchX reads several mounts from one string (each `type=` starts a new one) and lets a
    later alias overwrite an earlier key (`dst=/data,target=/nas-logs`): both would hide what
    an entry really mounts from a reader, so both are refused here.
    """
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in _MOUNT_KEYS:
            raise ValueError(f"{_quote(text)}: unknown mount option {_quote(key)} (type, src, dst, readonly, perm)")
        canonical = _MOUNT_KEYS[key]
        if canonical == "type" and fields:
            raise ValueError(f"{_quote(text)}: type must come first, and one entry holds one mount")
        if canonical in fields:
            raise ValueError(f"{_quote(text)}: {canonical} is given twice")
        fields[canonical] = value
    kind = fields.get("type")
    if kind not in ("bind", "volume", "device"):
        raise ValueError(f"{_quote(text)}: type must be bind, volume or device")
    if not fields.get("src"):
        raise ValueError(f"{_quote(text)}: src is required")
    dst = fields.get("dst") or (fields["src"] if kind == "device" else None)
    if not dst:
        raise ValueError(f"{_quote(text)}: dst is required")
    if not dst.startswith("/"):
        raise ValueError(f"{_quote(text)}: dst must be an absolute path")
    if "perm" in fields and (kind != "device" or not fields["perm"] or set(fields["perm"]) - set("rwm")):
        raise ValueError(f"{_quote(text)}: perm applies to device mounts only, as letters among r, w, m")
    return Mount(kind, fields["src"], dst, "readonly" in fields)


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problems.append(Problem(path or "(document)", item["msg"]))
    return problems


def _number_problem(value: Any) -> str | None:
    """Why a choice or fixed value cannot be used, if it cannot (infinite, NaN or absurdly large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if abs(value) > L.MAX_ABS_BOUND:
        return f"must be at most {L.MAX_ABS_BOUND:g} in absolute value"
    return None


def _check_parameter(p: Parameter, path: str) -> Iterable[Problem]:
    if not NAME_PATTERN.fullmatch(p.name):
        yield Problem(f"{path}.name", f"{_quote(p.name)} must be a letter or _ followed by letters, digits or _")
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
                if not bound.is_integer():
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
        for j, value in enumerate(p.values):
            problem = _number_problem(value)
            if problem:
                yield Problem(f"{path}.values[{j}]", problem)
    elif p.value is None:
        yield Problem(f"{path}.value", "is required for a fixed parameter")
    else:
        problem = _number_problem(p.value)
        if problem:
            yield Problem(f"{path}.value", problem)


def _numeric_values(p: Parameter) -> list[float] | None:
    """A choice's values as numbers, when they all are numbers."""
    values = p.values or []
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    return sorted(float(v) for v in values)


def ax_infers_log_scale(values: Sequence[float]) -> bool:
    """Whether Ax (1.3) models an ordered numeric choice on a log scale, by its own heuristic.

    Ax decides this itself (ChoiceParameter._get_default_log_scale): positive values spaced
    geometrically (2, 4, 8, 16 or 10, 20, 40) or spanning two orders of magnitude. Such a
    choice cannot appear in a parameter constraint: Ax refuses the experiment.
    """
    vals = sorted(values)
    if len(vals) < 3 or any(v <= 0.0 for v in vals):
        return False
    base = vals[1] / vals[0]
    if base > 1.0:
        fractions = [math.log(v) / math.log(base) for v in vals]
        parts = [f - round(f) for f in fractions]
        if all(abs(part - parts[0]) < 0.1 for part in parts):
            return True
    return math.floor(math.log10(vals[-1])) - math.floor(math.log10(vals[0])) >= 2


def _constraint_parameter_problem(p: Parameter | None, name: str) -> str | None:
    """Why a parameter cannot appear in a linear constraint (Ax's rules), if it cannot."""
    if p is None:
        return f"{_quote(name)} is not a parameter"
    if p.type == "fixed":
        return f'"{name}" is fixed: a constraint on it is a constant'
    if p.log_scale:
        return f'"{name}" is on a log scale: linear constraints need linear-scale parameters'
    if p.type == "choice":
        numbers = _numeric_values(p)
        if numbers is None or p.ordered is False:
            return f'"{name}" must be numeric and ordered to appear in a constraint'
        if ax_infers_log_scale(numbers):
            return (
                f'"{name}" is a choice Ax models on a log scale (its values are spaced geometrically or span '
                "two orders of magnitude): linear constraints need linear-scale parameters"
            )
    return None


def _box(p: Parameter) -> tuple[float, float] | None:
    """The smallest and largest value a (range or numeric choice) parameter takes."""
    if p.type == "range" and p.lower is not None and p.upper is not None:
        return p.lower, p.upper
    numbers = _numeric_values(p) if p.type == "choice" else None
    return (numbers[0], numbers[-1]) if numbers else None


def _sample_value(p: Parameter, rng: random.Random) -> float:
    if p.type == "choice":
        return float(rng.choice(_numeric_values(p) or [0.0]))
    assert p.lower is not None and p.upper is not None
    value = rng.uniform(p.lower, p.upper)
    return float(round(value)) if p.is_int else value


def _smallest_left_side(constraint: LinearConstraint, params: Mapping[str, Parameter]) -> float | None:
    """The least value of sum(coefficient * parameter) over the search space's box."""
    total = 0.0
    for name, coefficient in constraint.coefficients.items():
        box = _box(params[name])
        if box is None:
            return None
        total += coefficient * (box[0] if coefficient > 0 else box[1])
    return total


_FEASIBILITY_SAMPLES = 1000


def _feasibility_problems(
    constraints: Sequence[tuple[str, LinearConstraint]], params: Mapping[str, Parameter]
) -> Iterable[Problem]:
    """Constraints that leave Ax no room to sample (it fails with "Constraint polytope appears empty").

    Each constraint alone: its left side's smallest value over the search space must be below
    the bound. All together: some of a fixed sample of points must satisfy every one (Ax draws
    10,000 points, then falls back to a polytope sampler that fails on (nearly) empty regions).
    """
    usable: list[tuple[str, LinearConstraint]] = []
    for path, constraint in constraints:
        smallest = _smallest_left_side(constraint, params)
        if smallest is None:
            continue
        scale = max(abs(constraint.bound), abs(smallest), 1.0)
        if smallest > constraint.bound + 1e-12 * scale:
            yield Problem(
                path,
                f"no point of the search space satisfies it (the left side is at least {smallest:g} "
                f"> {constraint.bound:g}): Ax refuses an empty constraint polytope",
            )
        elif smallest >= constraint.bound - 1e-12 * scale:
            yield Problem(
                path,
                "only the boundary of the search space satisfies it (the left side is at least "
                f"{smallest:g} = {constraint.bound:g}): Ax cannot sample from it",
            )
        else:
            usable.append((path, constraint))
    if not usable:
        return
    names = sorted({n for _, c in usable for n in c.coefficients})
    rng = random.Random(0)
    for _ in range(_FEASIBILITY_SAMPLES):
        point = {n: _sample_value(params[n], rng) for n in names}
        if all(sum(c * point[n] for n, c in con.coefficients.items()) <= con.bound for _, con in usable):
            return
    yield Problem(
        usable[0][0] if len(usable) == 1 else usable[0][0].rsplit("[", 1)[0],
        f"leaves (almost) no room in the search space: none of {_FEASIBILITY_SAMPLES} sample points satisfies "
        "every constraint, and Ax would fail to generate candidates",
    )


def _duplicates(names: Iterable[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def check_spec(spec: NASExperimentSpec, root: str = "spec") -> list[Problem]:
    """Every rule between fields that pydantic's types cannot state."""
    return [
        *_check_parameters(spec, root),
        *_check_metrics(spec, root),
        *_check_budget(spec, root),
        *_check_trial(spec, root),
        *_check_early_stopping(spec, root),
    ]


def _check_early_stopping(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    rule = spec.early_stopping
    if rule is None:
        return
    if spec.metrics.source != "tensorboard":
        yield Problem(
            f"{root}.earlyStopping",
            "needs learning curves, which only the tensorboard metrics source has: a termination message arrives "
            "when the trial has ended (use metrics.source: tensorboard, or remove earlyStopping)",
        )
    if rule.decision_interval and rule.progression == "step" and rule.decision_interval < 1:
        yield Problem(f"{root}.earlyStopping.decisionInterval", "must be at least 1 when the progression is the step")


def check_cluster(spec: NASExperimentSpec, root: str = "spec") -> list[Problem]:
    """What a spec needs to run on Kubernetes besides `check_spec` (`nasctl run` needs neither)."""
    problems = []
    if not spec.trial.image:
        problems.append(Problem(f"{root}.trial.image", "is required to run trials on Kubernetes"))
    if spec.metrics.source == "tensorboard" and spec.metrics.claim_name is None:
        problems.append(
            Problem(
                f"{root}.metrics.claimName",
                "is required with the tensorboard source on Kubernetes: a trial's event files reach the operator "
                "only through this PersistentVolumeClaim (or use source: terminationMessage)",
            )
        )
    return problems


def _check_parameters(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    params = {p.name: p for p in spec.parameters}
    for i, p in enumerate(spec.parameters):
        yield from _check_parameter(p, f"{root}.parameters[{i}]")
    for name in sorted(_duplicates(p.name for p in spec.parameters)):
        yield Problem(f"{root}.parameters", f'duplicate parameter name "{name}"')
    if all(p.type == "fixed" for p in spec.parameters):
        yield Problem(f"{root}.parameters", "needs at least one range or choice parameter to search")
    checked: list[tuple[str, LinearConstraint]] = []
    for i, text in enumerate(spec.parameter_constraints):
        path = f"{root}.parameterConstraints[{i}]"
        try:
            constraint = parse_parameter_constraint(text)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        numbers = [*constraint.coefficients.values(), constraint.bound]
        if not all(math.isfinite(n) and abs(n) <= L.MAX_ABS_BOUND for n in numbers):
            yield Problem(path, f"coefficients and bound must be finite, at most {L.MAX_ABS_BOUND:g} in absolute value")
            continue
        problems = [_constraint_parameter_problem(params.get(n), n) for n in constraint.coefficients]
        for problem in problems:
            if problem:
                yield Problem(path, problem)
        if not any(problems):
            checked.append((path, constraint))
    yield from _feasibility_problems(checked, params)


def _check_metrics(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    # Metric names appear in the model's objective expressions; TensorBoard tags may hold anything.
    named = [(f"{root}.objectives[{i}].metric", o.metric) for i, o in enumerate(spec.objectives)]
    named += [(f"{root}.metrics.definitions[{i}].name", d.name) for i, d in enumerate(spec.metrics.definitions)]
    for path, name in named:
        if not NAME_PATTERN.fullmatch(name):
            yield Problem(
                path,
                f"{_quote(name)} must be a letter or _ followed by letters, digits or _ "
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
        if not math.isfinite(outcome.bound):
            yield Problem(path, "the bound must be a finite number")
            continue
        constrained.append(outcome.metric)
        if outcome.metric in objective_metrics:
            yield Problem(path, f'"{outcome.metric}" is an objective: give its bound as the objective\'s threshold')
        elif outcome.metric not in known_metrics:
            yield Problem(path, f'unknown metric "{outcome.metric}": declare it in {root}.metrics.definitions')
    for name in sorted(_duplicates(constrained)):
        yield Problem(f"{root}.outcomeConstraints", f'metric "{name}" is constrained more than once')


_BUDGET_DURATIONS = (("max_duration", "maxDuration"), ("trial_timeout", "trialTimeout"))


def _check_budget(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    budget = spec.budget
    durations = [(f"{root}.budget.{alias}", getattr(budget, field)) for field, alias in _BUDGET_DURATIONS]
    if spec.full_training is not None:
        durations.append((f"{root}.fullTraining.trialTimeout", spec.full_training.trial_timeout))
    for path, value in durations:
        if value is not None:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                yield Problem(path, str(exc))
                continue
            if seconds > L.MAX_DURATION_SECONDS:
                yield Problem(path, f"must be at most {L.MAX_DURATION_SECONDS / 86400:g} days")
            elif seconds <= 0 and path.endswith("fullTraining.trialTimeout"):
                yield Problem(path, "must be longer than 0s")
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
    if spec.storage.secret_ref is not None and not DNS_SUBDOMAIN.fullmatch(spec.storage.secret_ref.name):
        yield Problem(f"{root}.storage.secretRef.name", _k8s_name_rule(spec.storage.secret_ref.name, "Secret"))


def _k8s_name_rule(name: str, kind: str) -> str:
    return (
        f"{_quote(name)} is not a {kind} name of this namespace (lowercase letters, digits, '-' and '.', "
        "at most 253 characters; no namespace prefix)"
    )


def _check_resources(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    resources = spec.trial.resources
    for field in ("cpu", "memory"):
        text = getattr(resources, field)
        if text is None:
            continue
        path = f"{root}.trial.resources.{field}"
        try:
            value = parse_quantity(text)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        if value <= 0:
            yield Problem(path, f'"{text}" must be greater than zero')
        elif field == "memory" and memory_bytes(text) < 1024 * 1024:
            yield Problem(path, f'"{text}" is less than 1Mi: no trial runs in that (did you mean "{text}i"?)')


def _check_trial(spec: NASExperimentSpec, root: str) -> Iterable[Problem]:
    trial = spec.trial
    allowed = {p.name for p in spec.parameters} | RESERVED_PLACEHOLDERS
    templates = [("command", i, t) for i, t in enumerate(trial.command)]
    templates += [("args", i, t) for i, t in enumerate(trial.args)]
    templates += [("env", i, e.value) for i, e in enumerate(trial.env)]
    for field, i, template in templates:
        path = f"{root}.trial.{field}[{i}]" + (".value" if field == "env" else "")
        if "\x00" in template:
            yield Problem(path, "must not contain a NUL character (no program can receive it)")
            continue
        try:
            names = placeholders(template)
        except ValueError as exc:
            yield Problem(path, str(exc))
            continue
        for name in names:
            if name not in allowed:
                yield Problem(path, f'placeholder "{{{name}}}" names no parameter')
    if trial.image is not None and not IMAGE_PATTERN.fullmatch(trial.image):
        yield Problem(f"{root}.trial.image", f"{_quote(trial.image)} is not a container image reference")
    for i, env in enumerate(trial.env):
        if env.name.upper().startswith(RESERVED_ENV_PREFIX):
            yield Problem(
                f"{root}.trial.env[{i}].name",
                f'"{env.name}": names starting with {RESERVED_ENV_PREFIX} are reserved for the runtime '
                "(NAS_LOG_DIR, NAS_TRIAL_NAME, ...)",
            )
    yield from _check_resources(spec, root)
    destinations: list[str] = []
    for i, text in enumerate(trial.mounts):
        try:
            mount = parse_mount(text)
        except ValueError as exc:
            yield Problem(f"{root}.trial.mounts[{i}]", str(exc))
            continue
        if mount.dst is not None:
            destinations.append(posixpath.normpath(mount.dst))
    for dst in sorted(_duplicates(destinations)):
        yield Problem(f"{root}.trial.mounts", f"{_quote(dst)} is mounted more than once")
    if trial.service_account_name is not None and not DNS_SUBDOMAIN.fullmatch(trial.service_account_name):
        yield Problem(f"{root}.trial.serviceAccountName", _k8s_name_rule(trial.service_account_name, "ServiceAccount"))
    claim = spec.metrics.claim_name
    if claim is not None and not DNS_SUBDOMAIN.fullmatch(claim):
        yield Problem(f"{root}.metrics.claimName", _k8s_name_rule(claim, "PersistentVolumeClaim"))
    for name in sorted(_duplicates(e.name for e in trial.env)):
        yield Problem(f"{root}.trial.env", f'duplicate variable "{name}"')


def full_training_template(spec: NASExperimentSpec) -> TrialTemplate:
    """spec.trial with spec.fullTraining.trial's overrides: given fields replace, env is merged by name."""
    if spec.full_training is None:
        return spec.trial
    overrides = spec.full_training.trial
    update: dict[str, Any] = {
        name: getattr(overrides, name)
        for name in ("image", "command", "args", "resources", "retries")
        if getattr(overrides, name) is not None
    }
    if overrides.env:
        replaced = {e.name for e in overrides.env}
        update["env"] = [e for e in spec.trial.env if e.name not in replaced] + list(overrides.env)
    return spec.trial.model_copy(update=update)


def _problems_of(
    spec: NASExperimentSpec, policy: TrialPolicy | None, cluster: bool, root: str = "spec"
) -> list[Problem]:
    problems = _checked(spec, policy, cluster, root)
    if spec.full_training is not None:
        # Stage 2 runs the merged template: it must pass every rule spec.trial passes (placeholders, the cluster's
        # needs, the platform's policy), and each problem is named where the user wrote it.
        merged = spec.model_copy(update={"trial": full_training_template(spec), "full_training": None})
        problems += _full_training_problems(spec, _checked(merged, policy, cluster, root), problems, root)
    return problems


def _full_training_problems(
    spec: NASExperimentSpec, merged_problems: list[Problem], own: list[Problem], root: str
) -> list[Problem]:
    """The merged template's problems, each named where the user wrote the value (said once if spec.trial has it)."""
    assert spec.full_training is not None
    where, there = f"{root}.trial", f"{root}.fullTraining.trial"
    overrides = spec.full_training.trial
    replaced = {e.name for e in overrides.env}
    # merged env = spec.trial.env without the replaced names, then the overrides' env (full_training_template)
    env_origin = [(where, i) for i, e in enumerate(spec.trial.env) if not overrides.env or e.name not in replaced]
    env_origin += [(there, j) for j in range(len(overrides.env))]
    given = {
        name for name in ("image", "command", "args", "resources", "retries") if getattr(overrides, name) is not None
    }
    seen = {(problem.path, problem.rule) for problem in own}
    result = []
    for problem in merged_problems:
        if not (problem.path == where or problem.path.startswith((f"{where}.", f"{where}["))):
            continue
        rest = problem.path[len(where) :]
        env = re.match(r"^\.env\[(\d+)\](.*)$", rest)
        if env is not None and int(env.group(1)) < len(env_origin):
            base, index = env_origin[int(env.group(1))]
            path = f"{base}.env[{index}]{env.group(2)}"
        else:
            field = re.match(r"^\.(\w+)", rest)
            path = (there if field is not None and field.group(1) in given else where) + rest
        if (path, problem.rule) not in seen:
            result.append(Problem(path, problem.rule))
            seen.add((path, problem.rule))
    return result


def _checked(spec: NASExperimentSpec, policy: TrialPolicy | None, cluster: bool, root: str) -> list[Problem]:
    problems = check_spec(spec, root)
    if cluster:
        problems += check_cluster(spec, root)
    if policy is not None:
        from nas_operator.resource.policy import check_policy  # policy builds on this module

        problems += check_policy(spec, policy, root)
    return problems


def _not_a_mapping(document: Any, path: str) -> Problem:
    kind = {list: "a list", str: "a string", type(None): "empty"}.get(type(document), type(document).__name__)
    return Problem(path, f"must be a mapping (a NASExperiment{' spec' if path == 'spec' else ''}), not {kind}")


def load_experiment(document: Any, *, policy: TrialPolicy | None = None, cluster: bool = True) -> NASExperiment:
    """A checked NASExperiment, or SpecError listing every problem with its path.

    `cluster` adds what a run on Kubernetes needs (an image; a claim for TensorBoard logs);
    `policy` adds the platform team's trial policy. `nasctl run` passes cluster=False.
    """
    if not isinstance(document, Mapping):
        raise SpecError([_not_a_mapping(document, "(document)")])
    try:
        experiment = NASExperiment.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(exc)) from None
    problems = _problems_of(experiment.spec, policy, cluster)
    name = experiment.metadata.name
    if not NAME_RFC1123.fullmatch(name):
        problems.insert(
            0,
            Problem(
                "metadata.name",
                f"{_quote(name)} must be a lowercase RFC 1123 name (a-z, 0-9, '-'), at most "
                f"{L.MAX_EXPERIMENT_NAME} characters (Job names are <name>-t<index>)",
            ),
        )
    namespace = experiment.metadata.namespace
    if namespace is not None and not DNS_LABEL.fullmatch(namespace):
        problems.insert(0, Problem("metadata.namespace", f"{_quote(namespace)} is not a namespace name"))
    if problems:
        raise SpecError(problems)
    return experiment


def load_spec(document: Any, *, policy: TrialPolicy | None = None, cluster: bool = True) -> NASExperimentSpec:
    """A checked spec alone (the `spec:` part of the resource), as the operator receives it."""
    if not isinstance(document, Mapping):
        raise SpecError([_not_a_mapping(document, "spec")])
    try:
        spec = NASExperimentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError([Problem(f"spec.{p.path}", p.rule) for p in _pydantic_problems(exc)]) from None
    problems = _problems_of(spec, policy, cluster)
    if problems:
        raise SpecError(problems)
    return spec


# Job names are "<experiment>-t<index>" and must stay within 63 characters.
NAME_RFC1123 = re.compile(rf"^(?=.{{1,{L.MAX_EXPERIMENT_NAME}}}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# registry/repository[:tag][@digest], loosely: no spaces, no control characters, no shell.
IMAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._\-/:]*(@sha256:[a-f0-9]{64})?$", re.IGNORECASE)
