"""Reading a finished trial's metrics: TensorBoard event files, or a JSON termination message.

Event files are read by the bounded, link-refusing, incremental reader of event_reader.py (the trial controls its log
dir); here a one-off read of a finished trial becomes one value per metric, and every way that can go wrong, in the
files or in a termination message, becomes a MetricsError that fails that trial and nothing else.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nas_operator.core.event_files import EVENT_FILE_MARKER, find_event_files
from nas_operator.core.event_reader import DEFAULT_LIMITS, EventReader, ReadLimits
from nas_operator.core.scalar_curve import Curve, ScalarPoint
from nas_operator.resource.spec import MetricDefinition, NASExperimentSpec

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_FILE_MARKER",
    "MAX_TERMINATION_MESSAGE_BYTES",
    "MetricsError",
    "ScalarPoint",
    "event_files",
    "metric_definitions",
    "parse_termination_message",
    "read_scalars",
    "read_tensorboard_metrics",
    "read_trial_metrics",
    "reduce_curve",
]

MAX_TERMINATION_MESSAGE_BYTES = 4096
"""Kubernetes keeps at most 4096 bytes of a container's termination message; anything longer did not come from a
pod, and parsing it is work an attacker chooses."""


class MetricsError(Exception):
    """A trial's metrics could not be read; the message says which and why (it fails the trial)."""


def metric_definitions(spec: NASExperimentSpec) -> list[MetricDefinition]:
    """Every metric the experiment needs, defaulting undeclared objectives to tag=name, reduce=last."""
    declared = {d.name: d for d in spec.metrics.definitions}
    needed = [o.metric for o in spec.objectives] + [d.name for d in spec.metrics.definitions]
    seen: dict[str, MetricDefinition] = {}
    for name in needed:
        if name not in seen:
            seen[name] = declared.get(name) or MetricDefinition(name=name)
    return list(seen.values())


def event_files(log_dir: Path, limits: ReadLimits = DEFAULT_LIMITS) -> list[Path]:
    """The event files that would be read under `log_dir` (regular files only, no links followed, bounded)."""
    return [log_dir.joinpath(*parts) for parts in find_event_files(log_dir, limits.walk()).files]


def read_scalars(
    log_dir: Path, tags: Iterable[str] | None = None, limits: ReadLimits = DEFAULT_LIMITS
) -> dict[str, list[ScalarPoint]]:
    """Scalar curves under `log_dir` (optionally only `tags`), ordered by step then time, thinned to the bounds."""
    reader = EventReader(log_dir, tags, limits)
    reader.update()
    return {tag: curve.points() for tag, curve in reader.curves().items()}


def reduce_curve(points: Iterable[ScalarPoint], how: str) -> float:
    """last (at the highest step), max or min (NaN skipped) of a curve; ValueError for an unknown reduction."""
    curve = Curve()
    for point in points:
        curve.add(point)
    return curve.reduce(how)


def read_tensorboard_metrics(
    log_dir: Path, definitions: Iterable[MetricDefinition], limits: ReadLimits = DEFAULT_LIMITS
) -> dict[str, float]:
    """One value per metric, or MetricsError naming every missing or non-finite one (and any bound that was hit)."""
    definitions = list(definitions)
    reader = EventReader(log_dir, {d.effective_tag for d in definitions}, limits)
    report = reader.update()
    bounds = f"; reading stopped at a bound: {'; '.join(report.bounds)}" if report.bounds else ""
    if not reader.files:
        detail = f" ({reader.root_problem})" if reader.root_problem else ""
        raise MetricsError(f"no TensorBoard event files under {log_dir}{detail}{bounds}")
    values: dict[str, float] = {}
    problems: list[str] = []
    for definition in definitions:
        curve = reader.curve(definition.effective_tag)
        if curve is None:
            problems.append(
                f'metric "{definition.name}": tag "{definition.effective_tag}" not found in {len(reader.files)} '
                f"event file(s) under {log_dir} (tags there: {', '.join(reader.tags()) or 'none'})"
            )
            continue
        value = curve.reduce(definition.reduce)
        if not math.isfinite(value):
            problems.append(f'metric "{definition.name}": value is {value}')
            continue
        values[definition.name] = value
    if problems:
        raise MetricsError("; ".join(problems) + bounds)
    if report.bounds:
        log.warning("metrics under %s read within bounds, values may be partial: %s", log_dir, "; ".join(report.bounds))
    for warning in report.warnings:
        log.warning("metrics under %s: %s", log_dir, warning)
    return values


def _json_number(text: str) -> float:
    """JSON numbers as floats: an integer of 5000 digits is inf, not Python's int-string-limit ValueError."""
    return float(text)


def parse_termination_message(message: str, definitions: Iterable[MetricDefinition]) -> dict[str, float]:
    """Metrics from a pod's termination message: a JSON object {metric: number}.

    Every failure is a MetricsError: a message that is too long, not JSON, nested past the parser's recursion limit,
    not an object, or with a metric missing, not a number, or not finite (1e999 and 10**5000 parse as inf).
    """
    size = len(message.encode("utf-8", errors="replace"))
    if size > MAX_TERMINATION_MESSAGE_BYTES:
        raise MetricsError(
            f"termination message is {size} bytes, over the {MAX_TERMINATION_MESSAGE_BYTES} bytes Kubernetes keeps"
        )
    try:
        document: Any = json.loads(message, parse_int=_json_number, parse_float=_json_number)
    except RecursionError:
        raise MetricsError("termination message is nested too deeply to be a metrics object") from None
    except ValueError as exc:  # JSONDecodeError and anything a number conversion raises
        raise MetricsError(f"termination message is not JSON ({exc}): {message[:200]!r}") from None
    if not isinstance(document, Mapping):
        raise MetricsError(f"termination message must be a JSON object, got {type(document).__name__}")
    values: dict[str, float] = {}
    problems = []
    for definition in definitions:
        raw = document.get(definition.effective_tag, document.get(definition.name))
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            problems.append(f'metric "{definition.name}" missing or not a number in the termination message')
            continue
        try:
            number = float(raw)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            problems.append(f'metric "{definition.name}": value is {number}')
            continue
        values[definition.name] = number
    if problems:
        raise MetricsError("; ".join(problems))
    return values


def read_trial_metrics(spec: NASExperimentSpec, log_dir: Path, termination_message: str | None) -> dict[str, float]:
    """A finished trial's metrics from the source the spec names."""
    definitions = metric_definitions(spec)
    if spec.metrics.source == "terminationMessage":
        if not termination_message:
            raise MetricsError("the trial left no termination message")
        return parse_termination_message(termination_message, definitions)
    return read_tensorboard_metrics(log_dir, definitions)
