"""One scalar tag's learning curve, held in bounded memory however long the trial runs.

A trial may log a scalar at every step for days; the operator keeps a reader per running trial (early stopping reads
partial curves at every step), so a curve cannot grow with the trial. What the loop needs exactly is the reduction
(last, max, min), so those are kept as running values over every point ever seen; the curve itself is kept as an evenly
thinned sample (every point until the cap, then every 2nd, 4th, ... point in arrival order), which is what a
learning-curve model or a plot needs and what stays the same shape as the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MAX_POINTS_PER_TAG = 4096
"""Points kept per tag and event file: ample for a learning curve (one point per epoch or per logged step), small
enough that a trial logging every step for a million steps costs ~4096 points, not a million."""

REDUCTIONS = ("last", "max", "min")


@dataclass(frozen=True)
class ScalarPoint:
    step: int
    wall_time: float
    value: float


def _later(a: ScalarPoint, b: ScalarPoint) -> bool:
    """Whether `a` comes after `b` in a run: by step, then wall time (file order is not run order)."""
    return (a.step, a.wall_time) > (b.step, b.wall_time)


class Curve:
    """A bounded curve: exact last/max/min over every point added, and an evenly thinned sample of the points.

    max and min skip NaN (a run that diverged late still has its best epoch); a curve of NaN only reduces to NaN,
    and `last` is the value at the highest step whatever it is, so a diverged run's last value is NaN.
    """

    __slots__ = ("_kept", "_seen", "_stride", "count", "last", "max_point", "max_points", "min_point")

    def __init__(self, max_points: int = MAX_POINTS_PER_TAG) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2")
        self.max_points = max_points
        self.count = 0
        self.last: ScalarPoint | None = None
        self.max_point: ScalarPoint | None = None
        self.min_point: ScalarPoint | None = None
        self._kept: list[ScalarPoint] = []
        self._seen = 0
        self._stride = 1

    def add(self, point: ScalarPoint) -> None:
        self.count += 1
        if self.last is None or not _later(self.last, point):
            self.last = point
        if not math.isnan(point.value):
            if self.max_point is None or point.value > self.max_point.value:
                self.max_point = point
            if self.min_point is None or point.value < self.min_point.value:
                self.min_point = point
        if self._seen % self._stride == 0:
            self._kept.append(point)
            if len(self._kept) > self.max_points:
                self._kept = self._kept[::2]
                self._stride *= 2
        self._seen += 1

    def points(self) -> list[ScalarPoint]:
        """The thinned sample plus the last, max and min points, ordered by step then time."""
        chosen = {id(p): p for p in self._kept}
        for extra in (self.last, self.max_point, self.min_point):
            if extra is not None:
                chosen[id(extra)] = extra
        return sorted(chosen.values(), key=lambda p: (p.step, p.wall_time))

    def reduce(self, how: str) -> float:
        """The curve's value under `how` (last, max or min); ValueError for an empty curve or an unknown reduction."""
        if how not in REDUCTIONS:
            raise ValueError(f"unknown reduction {how!r}")
        if self.last is None:
            raise ValueError("empty curve")
        if how == "last":
            return self.last.value
        chosen = self.max_point if how == "max" else self.min_point
        return math.nan if chosen is None else chosen.value

    @classmethod
    def merged(cls, curves: Iterable[Curve], max_points: int = MAX_POINTS_PER_TAG) -> Curve:
        """One curve from several (a tag written by several event files): reductions stay exact."""
        result = cls(max_points)
        for curve in curves:
            result.count += curve.count - len(curve._kept)
            for point in curve._kept:
                result.add(point)
            for attr in ("last", "max_point", "min_point"):
                result._take(attr, getattr(curve, attr))
        return result

    def _take(self, attr: str, point: ScalarPoint | None) -> None:
        if point is None:
            return
        current: ScalarPoint | None = getattr(self, attr)
        if attr == "last":
            better = current is None or not _later(current, point)
        elif math.isnan(point.value):
            better = False
        elif attr == "max_point":
            better = current is None or point.value > current.value
        else:
            better = current is None or point.value < current.value
        if better:
            setattr(self, attr, point)
