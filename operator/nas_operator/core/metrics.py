"""Reading a finished trial's metrics: TensorBoard event files, or a JSON termination message.

TensorBoard's own loader is used, so both encodings of a scalar are understood: the legacy
`simple_value` that `torch.utils.tensorboard.SummaryWriter.add_scalar` writes, and the
tensor form with the scalars plugin that newer writers use (the case Katib's collector
misses, kubeflow/katib#2466). Event files are searched recursively, because Lightning's
TensorBoardLogger nests them under `<name>/version_<n>/`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nas_operator.resource.spec import MetricDefinition, NASExperimentSpec

log = logging.getLogger(__name__)
EVENT_FILE_MARKER = "tfevents"


class MetricsError(Exception):
    """A trial's metrics could not be read; the message says which and why (it fails the trial)."""


@dataclass(frozen=True)
class ScalarPoint:
    step: int
    wall_time: float
    value: float


def metric_definitions(spec: NASExperimentSpec) -> list[MetricDefinition]:
    """Every metric the experiment needs, defaulting undeclared objectives to tag=name, reduce=last."""
    declared = {d.name: d for d in spec.metrics.definitions}
    needed = [o.metric for o in spec.objectives] + [d.name for d in spec.metrics.definitions]
    seen: dict[str, MetricDefinition] = {}
    for name in needed:
        if name not in seen:
            seen[name] = declared.get(name) or MetricDefinition(name=name)
    return list(seen.values())


def event_files(log_dir: Path) -> list[Path]:
    if not log_dir.is_dir():
        return []
    found = [Path(root) / f for root, _, files in os.walk(log_dir) for f in files if EVENT_FILE_MARKER in f]
    return sorted(found)


def read_scalars(log_dir: Path, tags: Iterable[str] | None = None) -> dict[str, list[ScalarPoint]]:
    """All scalar curves under `log_dir` (optionally only `tags`), ordered by step then time."""
    # Imported here: TensorBoard's import costs ~1 s and only this path needs it.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    wanted = set(tags) if tags is not None else None
    curves: dict[str, list[ScalarPoint]] = {}
    for path in event_files(log_dir):
        try:
            for event in EventFileLoader(str(path)).Load():
                if not event.HasField("summary"):
                    continue
                for value in event.summary.value:
                    if wanted is not None and value.tag not in wanted:
                        continue
                    if value.metadata.plugin_data.plugin_name not in ("scalars", ""):
                        continue
                    if not value.HasField("tensor"):
                        continue
                    array = tensor_util.make_ndarray(value.tensor)
                    if array.size != 1:
                        continue
                    point = ScalarPoint(int(event.step), float(event.wall_time), float(array.reshape(()).item()))
                    curves.setdefault(value.tag, []).append(point)
        except Exception as exc:  # a torn or foreign file must not hide the others' values
            log.warning("skipping unreadable event file %s: %s", path, exc)
    for points in curves.values():
        points.sort(key=lambda p: (p.step, p.wall_time))
    return curves


def reduce_curve(points: list[ScalarPoint], how: str) -> float:
    if how == "last":
        return points[-1].value
    if how == "max":
        return max(p.value for p in points)
    if how == "min":
        return min(p.value for p in points)
    raise ValueError(f"unknown reduction {how!r}")


def read_tensorboard_metrics(log_dir: Path, definitions: Iterable[MetricDefinition]) -> dict[str, float]:
    """One value per metric, or MetricsError naming every missing or non-finite one."""
    definitions = list(definitions)
    files = event_files(log_dir)
    if not files:
        raise MetricsError(f"no TensorBoard event files under {log_dir}")
    curves = read_scalars(log_dir, {d.effective_tag for d in definitions})
    values: dict[str, float] = {}
    problems: list[str] = []
    for definition in definitions:
        points = curves.get(definition.effective_tag)
        if not points:
            available = sorted(read_scalars(log_dir).keys())
            problems.append(
                f'metric "{definition.name}": tag "{definition.effective_tag}" not found in {len(files)} '
                f"event file(s) under {log_dir} (tags there: {', '.join(available) or 'none'})"
            )
            continue
        value = reduce_curve(points, definition.reduce)
        if not math.isfinite(value):
            problems.append(f'metric "{definition.name}": value is {value}')
            continue
        values[definition.name] = value
    if problems:
        raise MetricsError("; ".join(problems))
    return values


def parse_termination_message(message: str, definitions: Iterable[MetricDefinition]) -> dict[str, float]:
    """Metrics from a pod's termination message: a JSON object {metric: number}."""
    try:
        document = json.loads(message)
    except json.JSONDecodeError as exc:
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
        if not math.isfinite(raw):
            problems.append(f'metric "{definition.name}": value is {raw}')
            continue
        values[definition.name] = float(raw)
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
