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
    if state.results():
        written.append(plot_pareto_png(spec, state, directory / "pareto.png"))
        if html:
            written.append(plot_pareto_html(spec, state, directory / "pareto.html"))
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


def plot_pareto_png(spec: NASExperimentSpec, state: LoopState, path: Path) -> Path:
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
            hover = [
                f"{state.trials[i].name}<br>"
                + "<br>".join(f"{k}: {v}" for k, v in state.trials[i].parameters.items())
                + "<br>"
                + "<br>".join(f"{k}: {v:.5g}" for k, v in m.items())
                for i, m, _, _ in chosen
            ]
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
