"""Exact hypervolume by slicing, fast enough to draw the hypervolume after every trial of a 1,000-trial search.

BoTorch's box decomposition (search/pareto.py, what the status reports) takes ~2 s for an 80-point front of three
objectives on one core; the page needs one value per change of the front (a hundred or more). Slicing along the
last objective and recursing down to the exact 2-D sweep costs O(n^(d-1) log n): milliseconds for d = 3 and the
fronts a search produces. Its values equal BoTorch's (tests compare them), so the curve ends at the status's value.
"""

from __future__ import annotations

import numpy as np

SLICING_MAX_OBJECTIVES = 4
"""Above this, slicing's n^(d-1) outgrows BoTorch's decomposition: `hypervolume_of` in pareto.py is used instead."""


def exact_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `points` (maximization) above `reference`."""
    above = points[np.all(points > reference, axis=1)] - reference
    if len(above) == 0:
        return 0.0
    if above.shape[1] > SLICING_MAX_OBJECTIVES:
        from nas_operator.search.pareto import hypervolume_of

        return hypervolume_of(points, reference)
    return _sliced(above)


def _sliced(points: np.ndarray) -> float:
    """Hypervolume of positive points against the origin."""
    if points.shape[1] == 1:
        return float(points[:, 0].max())
    if points.shape[1] == 2:
        # Sweep from the largest first objective: each point adds its width times how far it raises the best second.
        order = np.argsort(-points[:, 0], kind="stable")
        best = np.maximum.accumulate(points[order, 1])
        raised = np.diff(best, prepend=0.0)
        return float(np.sum(points[order, 0] * raised))
    # Slices between consecutive distinct values of the last objective: each is the (d-1)-volume of the points
    # reaching at least its top, times its thickness.
    last = points[:, -1]
    levels = np.unique(last)[::-1]
    volume = 0.0
    for k, top in enumerate(levels):
        bottom = levels[k + 1] if k + 1 < len(levels) else 0.0
        volume += _sliced(points[last >= top][:, :-1]) * (top - bottom)
    return volume
