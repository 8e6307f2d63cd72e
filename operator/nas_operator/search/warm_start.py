"""Warm-started GP hyperparameters: each model fit of an experiment starts from the previous fit's optimum.

Ax builds a fresh BoTorch model for every generation call and fits its hyperparameters (length
scales, noise, mean) from BoTorch's defaults. After a few dozen observations a batch of new results
hardly moves the optimum of the marginal likelihood, so starting L-BFGS there instead converges in
a fraction of the iterations: the same kind of optimum, found for less. The model class that loads
the last fitted values is search/single_task_gp.py's; nothing else about the fit changes.

The memory is per engine (one experiment), never shared: a fit of one experiment must not start
from another's hyperparameters, and a restored engine starts cold, as its first fit did.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from botorch.models import SingleTaskGP


class HyperparameterMemory:
    """The last model fitted for one experiment, per set of outcomes (weakly held: Ax keeps it while it is current).

    Keyed by outcomes because Ax fits one model per outcome when their rows differ (an early-stopped trial that
    logged only some metrics): one metric's fit must not start from another metric's length scales.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], weakref.ReferenceType[SingleTaskGP]] = {}
        self.warm_starts = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> HyperparameterMemory:
        # Ax copies generator options before it builds a model; the copy must remain this experiment's memory.
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (HyperparameterMemory, ())

    def start(self, model: SingleTaskGP, outcomes: tuple[str, ...] = ()) -> None:
        """Load the previous fit's hyperparameters for `outcomes` into `model` where shapes agree; remember `model`."""
        last = self._last.get(outcomes)
        previous = last() if last is not None else None
        if previous is not None:
            fitted = dict(previous.named_parameters())
            loaded = 0
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    value = fitted.get(name)
                    if value is not None and value.shape == parameter.shape:
                        parameter.copy_(value.detach().to(parameter))
                        loaded += 1
            self.warm_starts += loaded > 0
        self._last[outcomes] = weakref.ref(model)
