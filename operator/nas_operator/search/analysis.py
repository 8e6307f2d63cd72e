"""Whether the search's model can be trusted: Ax's own analyses of a stored engine, as plain figures.

This module and search/engine.py are the only ones that import Ax. The dashboard asks for the
diagnostics of a stored engine snapshot; the analyses run here on a restored client and come
back as plotly figure documents (what Ax draws, unchanged) or as the reason an analysis could
not run (Sobol trials only so far, too few results), so nothing outside this module sees Ax.

Leave-one-out style cross-validation of each modelled metric is what the Ax NAS tutorial shows to
judge the model; the parameters' total Sobol sensitivity per metric says what drives each one.
Both need the generation strategy's model, which a restored snapshot has not fitted yet: Ax's
analysis fits it from the experiment's data on first use (seconds for a few hundred trials).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.search.engine import Engine, TrialOutcome, model_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Diagnostic:
    """One analysis card: a plotly figure document, or the reason there is none (`error`)."""

    kind: str  # "cross-validation" or "sensitivity"
    title: str
    subtitle: str
    figure: dict[str, Any] | None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "subtitle": self.subtitle,
            "figure": self.figure,
            "error": self.error,
        }


def model_diagnostics(
    spec: NASExperimentSpec, snapshot: Mapping[str, Any], trials: Iterable[TrialOutcome]
) -> list[Diagnostic]:
    """Cross-validation of every modelled metric and each metric's parameter sensitivity, from a stored engine."""
    from ax.analysis.plotly.cross_validation import CrossValidationPlot
    from ax.analysis.plotly.plotly_analysis import PlotlyAnalysisCard
    from ax.analysis.plotly.sensitivity import SensitivityAnalysisPlot

    engine = Engine.restore(spec, snapshot, trials)
    # The engine keeps its Ax client private to the search package; the analyses need it whole.
    client: Any = engine.client
    requested: list[tuple[str, Any]] = [("cross-validation", CrossValidationPlot())]
    requested += [("sensitivity", SensitivityAnalysisPlot(metric_name=m, order="total")) for m in model_metrics(spec)]
    diagnostics: list[Diagnostic] = []
    with warnings.catch_warnings():  # pandas and GPyTorch warn on every fit; nothing for the user
        warnings.simplefilter("ignore")
        for kind, analysis in requested:
            card = client.compute_analyses(analyses=[analysis], display=False)[0]
            for leaf in card.flatten():
                if isinstance(leaf, PlotlyAnalysisCard):
                    diagnostics.append(Diagnostic(kind, leaf.title, leaf.subtitle, json.loads(leaf.blob)))
                else:  # Ax's error or not-applicable card: its text says why
                    reason = str(leaf.blob or leaf.subtitle).strip().splitlines()
                    diagnostics.append(Diagnostic(kind, leaf.title, leaf.subtitle, None, _short(reason)))
    return diagnostics


def _short(lines: list[str]) -> str:
    """The last line of a traceback is the reason; the frames above it say nothing to a dashboard user."""
    meaningful = [line for line in lines if line.strip()]
    return meaningful[-1][:500] if meaningful else "no reason given"
