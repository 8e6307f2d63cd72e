"""Warm-started GP hyperparameters: each model fit of an experiment starts from the previous fit's optimum.

Ax builds a fresh BoTorch model for every generation call and fits its hyperparameters (length
scales, noise, mean) from BoTorch's defaults. After a few dozen observations a batch of new results
hardly moves the optimum of the marginal likelihood, so starting L-BFGS there instead converges in
a fraction of the iterations: the same kind of optimum, found for less. This is configuration of
BoTorch's own model (a `SingleTaskGP` whose constructor loads the last fitted values), given to Ax
as the model class of the generation strategy's model node; nothing else about the fit changes.

The memory is per engine (one experiment), never shared: a fit of one experiment must not start
from another's hyperparameters, and a restored engine starts cold, as its first fit did.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import InputTransform
from botorch.utils.datasets import SupervisedDataset
from botorch.utils.types import DEFAULT
from gpytorch.likelihoods import Likelihood
from gpytorch.means import Mean
from torch import Tensor
from torch.nn import Module


class HyperparameterMemory:
    """The last model fitted for one experiment (weakly held: Ax keeps it while it is current)."""

    def __init__(self) -> None:
        self._last: weakref.ReferenceType[SingleTaskGP] | None = None
        self.warm_starts = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> HyperparameterMemory:
        # Ax copies generator options before it builds a model; the copy must remain this experiment's memory.
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (HyperparameterMemory, ())

    def start(self, model: SingleTaskGP) -> None:
        """Load the previous fit's hyperparameters into `model` where their shapes agree, and remember `model`."""
        previous = self._last() if self._last is not None else None
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
        self._last = weakref.ref(model)


class WarmStartedSingleTaskGP(SingleTaskGP):
    """BoTorch's SingleTaskGP, whose hyperparameters start where this experiment's previous fit ended."""

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        train_Yvar: Tensor | None = None,
        likelihood: Likelihood | None = None,
        covar_module: Module | None = None,
        mean_module: Mean | None = None,
        outcome_transform: Any = DEFAULT,
        input_transform: InputTransform | None = None,
        memory: HyperparameterMemory | None = None,
    ) -> None:
        # The full signature, not *args: Ax inspects it to decide which inputs (transforms, modules) it may pass.
        super().__init__(
            train_X,
            train_Y,
            train_Yvar,
            likelihood=likelihood,
            covar_module=covar_module,
            mean_module=mean_module,
            outcome_transform=outcome_transform,
            input_transform=input_transform,
        )
        if memory is not None:
            memory.start(self)

    @classmethod
    def construct_inputs(  # type: ignore[override]
        cls, training_data: SupervisedDataset, memory: HyperparameterMemory | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = dict(super().construct_inputs(training_data, **kwargs))
        inputs["memory"] = memory
        return inputs
