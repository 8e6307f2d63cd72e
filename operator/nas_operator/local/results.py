"""What an experiment leaves for a person: pareto.json, trials.csv, a Pareto plot (PNG and HTML)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

from nas_operator.core.state import LoopState
from nas_operator.core.status import build_status
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.search.pareto import feasible, pareto_indices


def write_results(spec: NASExperimentSpec, state: LoopState, directory: Path, html: bool = True) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_pareto_json(spec, state, directory / "pareto.json"), write_trials_csv(spec, state, directory)]
    if state.full_trials:
        written.append(write_full_training_csv(spec, state, directory / "full_training.csv"))
    if state.results():
        stem = "best" if len(spec.objectives) == 1 else "pareto"  # one objective: the best value, trial by trial
        written.append(plot_pareto_png(spec, state, directory / f"{stem}.png"))
        if html:
            written.append(plot_pareto_html(spec, state, directory / f"{stem}.html"))
    return written


def write_pareto_json(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    status = build_status(spec, state)
    document: dict[str, Any] = {
        "experiment": state.experiment,
        "phase": status.phase,
        "reason": status.reason,
        "message": status.message,
        "objectives": [o.model_dump(mode="json") for o in spec.objectives],
        "outcomeConstraints": list(spec.outcome_constraints),
        "hypervolume": status.hypervolume,
        "trials": status.trials.model_dump(mode="json", by_alias=True),
        "paretoFront": [p.model_dump(mode="json") for p in status.pareto_front],
    }
    if len(spec.objectives) == 1:
        document["bestTrial"] = status.best_trial.model_dump(mode="json") if status.best_trial else None
        document["bestValue"] = status.best_value
    if status.full_training is not None:
        block = status.full_training.model_dump(mode="json", by_alias=True, exclude_none=True)
        block["trials"] = [
            {
                "searchTrial": state.trials[index].name if index in state.trials else None,
                "trial": full.name,
                "status": full.status,
                "proxyMetrics": state.trials[index].metrics if index in state.trials else {},
                "fullMetrics": full.metrics,
                "reason": full.reason,
            }
            for index, full in sorted(state.full_trials.items())
        ]
        document["fullTraining"] = block
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write_trials_csv(spec: NASExperimentSpec, state: LoopState, directory: Path) -> Path:
    path = directory / "trials.csv"
    parameters = [p.name for p in spec.parameters]
    metrics = sorted({m for t in state.trials.values() for m in t.metrics})
    front = set(pareto_indices(spec, state.results()))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "index",
                "trial",
                "status",
                "generator",
                "pareto",
                *parameters,
                *metrics,
                "progression",
                "duration_s",
                "reason",
            ]
        )
        for index, trial in sorted(state.trials.items()):
            duration = trial.duration
            writer.writerow(
                [
                    index,
                    trial.name,
                    trial.status,
                    trial.generator,
                    index in front,
                    *[trial.parameters.get(p, "") for p in parameters],
                    *[trial.metrics.get(m, "") for m in metrics],
                    "" if trial.progression is None else f"{trial.progression:g}",
                    "" if duration is None else f"{duration:.1f}",
                    trial.reason.replace("\n", " | ")[:500],
                ]
            )
    return path


def write_full_training_csv(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    """Stage 2, one row per candidate: its proxy (search) metrics beside its full-training metrics."""
    metrics = [o.metric for o in spec.objectives] + sorted(
        {m for t in state.full_trials.values() for m in t.metrics} - {o.metric for o in spec.objectives}
    )
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["index", "search_trial", "trial", "status", *[p.name for p in spec.parameters]]
        header += [f"proxy_{m}" for m in metrics] + [f"full_{m}" for m in metrics] + ["duration_s", "reason"]
        writer.writerow(header)
        for index, full in sorted(state.full_trials.items()):
            proxy = state.trials[index].metrics if index in state.trials else {}
            duration = full.duration
            writer.writerow(
                [
                    index,
                    state.trials[index].name if index in state.trials else "",
                    full.name,
                    full.status,
                    *[full.parameters.get(p.name, "") for p in spec.parameters],
                    *[proxy.get(m, "") for m in metrics],
                    *[full.metrics.get(m, "") for m in metrics],
                    "" if duration is None else f"{duration:.1f}",
                    full.reason.replace("\n", " | ")[:500],
                ]
            )
    return path


def _plot_rows(spec: NASExperimentSpec, state: LoopState) -> list[tuple[int, dict[str, float], bool, bool]]:
    """(index, metrics, feasible, on the front) per succeeded trial."""
    results = state.results()
    front = set(pareto_indices(spec, results))
    return [(i, m, feasible(spec, m), i in front) for i, m in sorted(results.items())]


def _stopped_early(state: LoopState, x: str, y: str) -> list[tuple[float, float]]:
    """Early-stopped trials at the values they had when stopped (only those that had logged both metrics)."""
    return [(t.metrics[x], t.metrics[y]) for t in state.by_status("earlyStopped") if x in t.metrics and y in t.metrics]


def _staircase(front: list[tuple[float, float]], x_min: bool, y_min: bool) -> list[tuple[float, float]]:
    """The attainment boundary through 2-D front points: between neighbours, the corner worse in both."""
    line = [front[0]]
    for a, b in itertools.pairwise(front):
        worse_x = max(a[0], b[0]) if x_min else min(a[0], b[0])
        worse_y = max(a[1], b[1]) if y_min else min(a[1], b[1])
        line += [(worse_x, worse_y), b]
    return line


def _best_so_far(spec: NASExperimentSpec, rows: list[tuple[int, dict[str, float], bool, bool]]) -> list[float]:
    """The best feasible value up to each succeeded trial, in index order (nan before the first feasible one)."""
    objective = spec.objectives[0]
    best, line = float("nan"), []
    for _, metrics, ok, _ in rows:
        value = metrics[objective.metric]
        if ok and (best != best or (value < best if objective.minimize else value > best)):
            best = value
        line.append(best)
    return line


def plot_best_png(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    """One objective: every trial's value by trial index, the best so far, the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = spec.objectives[0]
    rows = _plot_rows(spec, state)
    figure, ax = plt.subplots(figsize=(7.5, 5.2))
    for label, chosen, color, size in (
        ("outside thresholds", [r for r in rows if not r[2]], "lightgrey", 22),
        ("within thresholds", [r for r in rows if r[2]], "steelblue", 30),
    ):
        ax.scatter([i for i, *_ in chosen], [m[objective.metric] for _, m, *_ in chosen], c=color, s=size, label=label)
    metric = objective.metric
    stopped = [(t.index, t.metrics[metric]) for t in state.by_status("earlyStopped") if metric in t.metrics]
    if stopped:
        xs, ys = [i for i, _ in stopped], [v for _, v in stopped]
        ax.scatter(xs, ys, marker="x", c="darkorange", s=26, label="stopped early (when stopped)")
    ax.step([i for i, *_ in rows], _best_so_far(spec, rows), where="post", color="crimson", lw=1.5, label="best so far")
    best = [r for r in rows if r[3]]
    if best:
        ax.scatter([best[0][0]], [best[0][1][objective.metric]], facecolors="none", edgecolors="crimson", s=110, lw=1.5)
    if objective.threshold is not None:
        ax.axhline(objective.threshold, color="grey", ls="--", lw=1)
    ax.set_xlabel("trial index")
    ax.set_ylabel(f"{objective.metric} ({objective.goal})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    shown = f"best {metric} {best[0][1][metric]:.5g} (trial {best[0][0]})" if best else "no trial within the threshold"
    ax.set_title(f"{state.experiment}: {len(rows)} trials, {shown}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_best_html(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    """One objective, interactive: hover shows each trial's parameters."""
    import plotly.graph_objects as go

    objective = spec.objectives[0]
    rows = _plot_rows(spec, state)
    figure = go.Figure()
    for label, chosen, color in (
        ("outside thresholds", [r for r in rows if not r[2]], "lightgrey"),
        ("within thresholds", [r for r in rows if r[2]], "steelblue"),
    ):
        figure.add_trace(
            go.Scatter(
                x=[i for i, *_ in chosen],
                y=[m[objective.metric] for _, m, *_ in chosen],
                mode="markers",
                name=label,
                marker={"color": color},
                text=[_hover(state, i, m) for i, m, *_ in chosen],
                hoverinfo="text",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=[i for i, *_ in rows],
            y=_best_so_far(spec, rows),
            mode="lines",
            line={"shape": "hv", "color": "crimson"},
            name="best so far",
        )
    )
    figure.update_xaxes(title_text="trial index")
    figure.update_yaxes(title_text=f"{objective.metric} ({objective.goal})")
    figure.update_layout(title=f"{state.experiment}: best {objective.metric}", height=560)
    figure.write_html(str(path), include_plotlyjs="directory")
    return path


def _hover(state: LoopState, index: int, metrics: dict[str, float]) -> str:
    return (
        f"{state.trials[index].name}<br>"
        + "<br>".join(f"{k}: {v}" for k, v in state.trials[index].parameters.items())
        + "<br>"
        + "<br>".join(f"{k}: {v:.5g}" for k, v in metrics.items())
    )


def plot_pareto_png(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    """Every pair of objectives, the front circled; with one objective, the best value trial by trial."""
    if len(spec.objectives) == 1:
        return plot_best_png(spec, state, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _plot_rows(spec, state)
    pairs = list(itertools.combinations(range(len(spec.objectives)), 2))
    figure, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 5.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        oa, ob = spec.objectives[a], spec.objectives[b]
        xs = [m[oa.metric] for _, m, _, _ in rows]
        ys = [m[ob.metric] for _, m, _, _ in rows]
        order = [i for i, _, _, _ in rows]
        outside = [k for k, r in enumerate(rows) if not r[2]]
        inside = [k for k, r in enumerate(rows) if r[2]]
        ax.scatter([xs[k] for k in outside], [ys[k] for k in outside], c="lightgrey", s=22, label="outside thresholds")
        points = ax.scatter(
            [xs[k] for k in inside],
            [ys[k] for k in inside],
            c=[order[k] for k in inside],
            cmap="viridis",
            s=30,
            label="within thresholds",
        )
        stopped = _stopped_early(state, oa.metric, ob.metric)
        if stopped:
            ax.scatter(
                [p[0] for p in stopped],
                [p[1] for p in stopped],
                marker="x",
                c="darkorange",
                s=26,
                label="stopped early (when stopped)",
            )
        front = sorted((xs[k], ys[k]) for k, r in enumerate(rows) if r[3])
        if front and len(pairs) == 1:
            line = _staircase(front, oa.minimize, ob.minimize)
            ax.plot([p[0] for p in line], [p[1] for p in line], color="crimson", lw=1.5)
        ax.scatter(
            [xs[k] for k, r in enumerate(rows) if r[3]],
            [ys[k] for k, r in enumerate(rows) if r[3]],
            facecolors="none",
            edgecolors="crimson",
            s=90,
            lw=1.5,
            label="Pareto front",
        )
        for objective, line in ((oa, ax.axvline), (ob, ax.axhline)):
            if objective.threshold is not None:
                line(objective.threshold, color="grey", ls="--", lw=1)
        ax.set_xlabel(f"{oa.metric} ({oa.goal})")
        ax.set_ylabel(f"{ob.metric} ({ob.goal})")
        ax.grid(alpha=0.3)
        if inside:
            figure.colorbar(points, ax=ax, label="trial index")
        ax.legend(loc="best", fontsize=8)
    figure.suptitle(f"{state.experiment}: {len(rows)} trials, {sum(r[3] for r in rows)} on the Pareto front")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_pareto_html(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
    """An interactive plot (hover shows each trial's parameters); plotly.js is written beside it once."""
    if len(spec.objectives) == 1:
        return plot_best_html(spec, state, path)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = _plot_rows(spec, state)
    pairs = list(itertools.combinations(range(len(spec.objectives)), 2))
    figure = make_subplots(rows=1, cols=len(pairs))
    for col, (a, b) in enumerate(pairs, start=1):
        oa, ob = spec.objectives[a], spec.objectives[b]
        groups: list[tuple[str, list[tuple[int, dict[str, float], bool, bool]], dict[str, Any]]] = [
            ("outside thresholds", [r for r in rows if not r[2]], {"color": "lightgrey"}),
            ("within thresholds", [r for r in rows if r[2] and not r[3]], {"color": "steelblue"}),
            ("Pareto front", [r for r in rows if r[3]], {"color": "crimson", "size": 11}),
        ]
        for label, chosen, style in groups:
            hover = [_hover(state, i, m) for i, m, _, _ in chosen]
            figure.add_trace(
                go.Scatter(
                    x=[m[oa.metric] for _, m, _, _ in chosen],
                    y=[m[ob.metric] for _, m, _, _ in chosen],
                    mode="markers",
                    name=label,
                    marker=style,
                    text=hover,
                    hoverinfo="text",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        stopped = _stopped_early(state, oa.metric, ob.metric)
        if stopped:
            figure.add_trace(
                go.Scatter(
                    x=[p[0] for p in stopped],
                    y=[p[1] for p in stopped],
                    mode="markers",
                    name="stopped early (when stopped)",
                    marker={"color": "darkorange", "symbol": "x"},
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        figure.update_xaxes(title_text=f"{oa.metric} ({oa.goal})", row=1, col=col)
        figure.update_yaxes(title_text=f"{ob.metric} ({ob.goal})", row=1, col=col)
    figure.update_layout(title=f"{state.experiment}: Pareto front", height=560)
    figure.write_html(str(path), include_plotlyjs="directory")
    return path
