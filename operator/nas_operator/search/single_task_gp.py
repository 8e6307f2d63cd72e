"""The GP class the engine gives Ax's model node: BoTorch's SingleTaskGP, warm-started, on a bounded training set.

This is configuration of BoTorch's own model, not a new one: the constructor loads the previous fit's
hyperparameters (search/warm_start.py) and `construct_inputs`, which Ax calls with the experiment's data, keeps at
most a limit of rows once the experiment outgrows an exact GP (search/training_subset.py). Ax still chooses the
acquisition, its baseline (every observation) and the optimizer.
"""

from __future__ import annotations

from typing import Any

from botorch.models import SingleTaskGP
from botorch.models.transforms.input import InputTransform
from botorch.utils.datasets import SupervisedDataset
from botorch.utils.types import DEFAULT
from gpytorch.likelihoods import Likelihood
from gpytorch.means import Mean
from torch import Tensor
from torch.nn import Module

from nas_operator.search.training_subset import TrainingSubset
from nas_operator.search.warm_start import HyperparameterMemory


class EngineSingleTaskGP(SingleTaskGP):
    """SingleTaskGP whose fit starts where this experiment's last ended, on at most `subset.limit` observations."""

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
        outcomes: tuple[str, ...] = (),
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
            memory.start(self, outcomes)

    @classmethod
    def construct_inputs(  # type: ignore[override]
        cls,
        training_data: SupervisedDataset,
        memory: HyperparameterMemory | None = None,
        subset: TrainingSubset | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = dict(super().construct_inputs(training_data, **kwargs))
        inputs["memory"] = memory
        inputs["outcomes"] = tuple(training_data.outcome_names)
        rows = subset.rows(inputs["train_X"], inputs["train_Y"], training_data.outcome_names) if subset else None
        if rows is not None:
            for key in ("train_X", "train_Y", "train_Yvar"):
                if inputs.get(key) is not None:
                    inputs[key] = inputs[key][..., rows, :]
        return inputs
