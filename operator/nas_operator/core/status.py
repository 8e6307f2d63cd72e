"""The NASExperiment status (what `kubectl get/describe` and `nasctl` show) from the trial table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from nas_operator.core.full_training import full_training_status, low_correlations
from nas_operator.core.state import LoopState
from nas_operator.resource.spec import Condition, NASExperimentSpec, NASExperimentStatus, ParetoPoint, TrialCounts
from nas_operator.search.pareto import hypervolume, pareto_indices


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trial_counts(state: LoopState) -> TrialCounts:
    return TrialCounts(
        total=state.launched,
        pending=state.count("queued", "launching"),
        running=state.count("running"),
        succeeded=state.count("succeeded"),
        failed=state.count("failed"),
        stopped=state.count("stopped"),
        early_stopped=state.count("earlyStopped"),
    )


def training_seconds_saved(state: LoopState) -> float:
    """Estimated training time not spent thanks to early stopping (each stopped trial's estimate, summed)."""
    return round(sum(t.saved_seconds for t in state.by_status("earlyStopped")), 1)


def pareto_front(spec: NASExperimentSpec, state: LoopState) -> list[ParetoPoint]:
    results = state.results()
    return [
        ParetoPoint(
            trial=state.trials[i].name,
            index=i,
            parameters=state.trials[i].parameters,
            metrics=state.trials[i].metrics,
        )
        for i in pareto_indices(spec, results)
    ]


def conditions(state: LoopState, previous: list[Condition] | None = None) -> list[Condition]:
    """One condition per phase, Katib-style; a condition keeps its transition time while its status holds."""
    now = timestamp(state.finished_at if state.finished_at else state.resumed_at)
    old = {c.type: c for c in previous or []}
    result = []
    for kind in ("Running", "Succeeded", "Failed", "Stopped"):
        active = state.phase == kind
        status: Literal["True", "False"] = "True" if active else "False"
        before = old.get(kind)
        since = before.last_transition_time if before is not None and before.status == status else now
        if active or before is not None:
            result.append(
                Condition(
                    type=kind,
                    status=status,
                    reason=state.reason if active else (before.reason if before else ""),
                    message=state.message if active else (before.message if before else ""),
                    last_transition_time=since,
                )
            )
    return result


def rank_condition(
    spec: NASExperimentSpec, taus: dict[str, float], previous: list[Condition] | None, state: LoopState
) -> Condition:
    """ProxyRankCorrelation: False (a warning) while the proxy ranked the candidates worse than the spec allows."""
    low = low_correlations(spec, taus)
    shown = ", ".join(f"{metric} {tau:.2f}" for metric, tau in taus.items())
    status: Literal["True", "False"] = "False" if low else "True"
    reason = "LowRankCorrelation" if low else "RankCorrelationOK"
    bar = spec.full_training.min_rank_correlation if spec.full_training else 0.0
    message = f"Kendall's tau between proxy and full-training metrics: {shown} (minRankCorrelation {bar:g})"
    before = next((c for c in previous or [] if c.type == "ProxyRankCorrelation"), None)
    now = timestamp(state.finished_at if state.finished_at else state.resumed_at)
    since = before.last_transition_time if before is not None and before.status == status else now
    return Condition(
        type="ProxyRankCorrelation", status=status, reason=reason, message=message, last_transition_time=since
    )


def build_status(
    spec: NASExperimentSpec,
    state: LoopState,
    observed_generation: int | None = None,
    previous: NASExperimentStatus | None = None,
) -> NASExperimentStatus:
    front = pareto_front(spec, state)
    single = len(spec.objectives) == 1
    full = full_training_status(spec, state)
    kept = conditions(state, previous.conditions if previous else None)
    if full is not None and full.rank_correlation:
        kept.append(rank_condition(spec, full.rank_correlation, previous.conditions if previous else None, state))
    best = front[0] if single and front else None  # one objective: the front is the best trial (ties: lowest index)
    return NASExperimentStatus(
        phase=state.phase,  # type: ignore[arg-type]
        reason=state.reason,
        message=state.message,
        conditions=kept,
        observed_generation=observed_generation,
        trials=trial_counts(state),
        pareto_front=[] if single else front,
        pareto_size=None if single else len(front),
        hypervolume=hypervolume(spec, state.results()) if state.results() and not single else None,
        best_trial=best,
        best_value=best.metrics[spec.objectives[0].metric] if best is not None else None,
        warm_start_trials=len(state.prior) if state.prior else None,
        full_training=full,
        training_seconds_saved=training_seconds_saved(state) if spec.early_stopping is not None else None,
        started_at=timestamp(state.started_at),
        finished_at=timestamp(state.finished_at),
    )
