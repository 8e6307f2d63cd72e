"""Which observations the GP is fitted on once an experiment has more than an exact GP can afford.

An exact GP costs O(n^3) to fit and O(n^2) per candidate the acquisition optimizer evaluates; at 1,000 observations
one batch of 4 took 210 s on 2 cores, nine tenths of it in the acquisition (docs/benchmarks.md). The acquisition only
needs the model to be right where a new point can still improve the hypervolume: near the observed front. So above a
limit the model is fitted on
- the best non-dominated layers (half the limit), in each objective's and constraint metric's own direction;
- the latest observations (an eighth; Ax hands the rows over in trial order): where the acquisition was looking last,
  which a model that did not know them would find as uncertain as before and propose again;
- a space-filling rest (farthest-point sampling over the inputs), so exploration away from the front keeps a prior.
The optimizer still avoids every observed point. The noisy baseline of qLogNEHVI (the points whose posterior samples
define the current front, pruned by sampling all of them: 7 s a candidate at 1,000 observations) is limited to the same
rows by the engine (search/engine.py): a point outside the best layers has next to no chance of being on a sampled
front.

The choice is a pure function of the data, so a restored engine fits the same model as the one before the restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from botorch.utils.multi_objective.pareto import is_non_dominated
from torch import Tensor


class TrainingSubset:
    """Up to `limit` rows of an experiment's observations; `goals` gives each metric's direction (+1 max, -1 min)."""

    def __init__(self, limit: int, goals: Mapping[str, int]) -> None:
        if limit < 2:
            raise ValueError(f"a training subset needs a limit of at least 2, not {limit}")
        self.limit = limit
        self.goals = dict(goals)
        # The inputs each model of the last fit kept, by its outcomes (None: every row). One model for all outcomes
        # as a rule; one per outcome when their rows differ (an early-stopped trial logged only some metrics).
        self.kept: dict[tuple[str, ...], Tensor | None] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> TrainingSubset:
        # Ax deep-copies generator options before every fit; the copy must remain this experiment's subset.
        return self

    def __reduce__(self) -> tuple[object, ...]:
        return (TrainingSubset, (self.limit, self.goals))

    def rows(self, X: Tensor, Y: Tensor, outcome_names: Sequence[str]) -> Tensor | None:
        """The indices of the rows to fit on, ascending; None when every row fits under the limit.

        With a model per outcome each sees only its own metric, so its best layers are that metric's best values:
        the trade-off between the objectives is then covered by the latest and the space-filling rows only.
        """
        n = X.shape[-2]
        key = tuple(outcome_names)
        self.kept[key] = None
        if n <= self.limit:
            return None
        columns = [i for i, name in enumerate(outcome_names) if name in self.goals]
        front: list[int] = []
        if columns:
            signs = torch.tensor([float(self.goals[outcome_names[i]]) for i in columns], dtype=Y.dtype, device=Y.device)
            front = _best_layers(Y[..., columns] * signs, self.limit // 2)
        in_front = set(front)
        recent = [i for i in range(n - self.limit // 8, n) if i not in in_front]
        rows = torch.tensor(sorted(_farthest_points(X, front + recent, self.limit)), dtype=torch.long, device=X.device)
        self.kept[key] = X[rows]
        return rows

    def baseline(self, X_observed: Tensor, models: Sequence[Sequence[str]]) -> Tensor:
        """The rows of `X_observed` that the current `models` (each by its outcomes) were fitted on.

        All of them when one of those models kept every row or was not fitted through this subset.
        """
        kept_inputs = [self.kept.get(tuple(outcomes)) for outcomes in models]
        if not kept_inputs or any(inputs is None for inputs in kept_inputs):
            return X_observed
        kept = torch.zeros(X_observed.shape[-2], dtype=torch.bool, device=X_observed.device)
        for inputs in kept_inputs:
            assert inputs is not None
            kept |= (X_observed.unsqueeze(-2) == inputs.to(X_observed)).all(dim=-1).any(dim=-1)
        return X_observed[kept] if bool(kept.any()) else X_observed


def _best_layers(F: Tensor, count: int) -> list[int]:
    """`count` rows taken from the non-dominated layers of F (maximized), best layers first.

    A layer that does not fit whole is thinned by farthest-point sampling in objective space from its extremes (each
    objective's best), so what is kept of the front still spans it, in any number of objectives.
    """
    finite = torch.isfinite(F).all(dim=-1)
    remaining = torch.nonzero(finite).flatten()
    chosen: list[int] = []
    while remaining.numel() and len(chosen) < count:
        layer = remaining[is_non_dominated(F[remaining], deduplicate=False)]
        room = count - len(chosen)
        if layer.numel() > room:
            extremes = list(dict.fromkeys(int(i) for i in torch.argmax(F[layer], dim=0)))[:room]
            layer = layer[_farthest_points(F[layer], extremes, room)]
        chosen += layer.tolist()
        mask = torch.ones(F.shape[0], dtype=torch.bool, device=F.device)
        mask[chosen] = False
        remaining = remaining[mask[remaining]]
    return chosen


def _farthest_points(X: Tensor, seeds: list[int], count: int) -> list[int]:
    """`seeds`, then one row at a time: the farthest (inputs scaled to the unit cube) from every row chosen."""
    low, high = X.min(dim=0).values, X.max(dim=0).values
    unit = (X - low) / torch.where(high > low, high - low, torch.ones_like(high))
    chosen = list(seeds) or [0]
    distance = torch.cdist(unit, unit[chosen]).min(dim=-1).values
    distance[chosen] = -1.0
    while len(chosen) < count:
        pick = int(torch.argmax(distance))
        chosen.append(pick)
        distance = torch.minimum(distance, torch.cdist(unit, unit[pick : pick + 1]).flatten())
        distance[pick] = -1.0
    return chosen
