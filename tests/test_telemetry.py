"""Prometheus metrics: names, values, cleanup, promtool's verdict, and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nas_operator.cluster.operator_metrics import live_metrics
from nas_operator.cluster.telemetry import Telemetry
from nas_operator.resource.spec import FullTrainingStatus, NASExperimentStatus, TrialCounts
from nas_operator.search.fit_pool import FitPool

from .conftest import ROOT

DASHBOARD = ROOT / "charts" / "nas-operator" / "dashboards" / "nas-operator.json"


def promtool() -> str:
    """Debian's promtool; scripts/test installs the prometheus package when it is missing."""
    path = shutil.which("promtool")
    assert path, "promtool is not installed (scripts/test installs Debian's prometheus package)"
    return path


def promtool_problems(exposition: str) -> str:
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )
    return (result.stdout + result.stderr).strip() if result.returncode != 0 or result.stdout.strip() else ""


def samples(telemetry: Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(telemetry.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _status(phase: str, succeeded: int, running: int, hypervolume: float | None) -> NASExperimentStatus:
    return NASExperimentStatus(
        phase=phase,  # type: ignore[arg-type]
        trials=TrialCounts(total=succeeded + running, running=running, succeeded=succeeded),
        hypervolume=hypervolume,
        pareto_size=min(succeeded, 3),
    )


HELD: list[object] = []


def exercised() -> Telemetry:
    """A registry holding every series the operator produces for two experiments."""
    telemetry = Telemetry()
    early = _status("Running", 4, 2, 0.61).model_copy(
        update={
            "trials": TrialCounts(total=9, running=2, succeeded=4, early_stopped=3),
            "training_seconds_saved": 1234.5,
        }
    )
    telemetry.observe_status("team-a", "mlp", early, state_bytes=5120)
    telemetry.observe_status("team-b", "cnn", _status("Succeeded", 10, 0, 0.83), state_bytes=9000)
    telemetry.observe_trial("team-a", "mlp", "succeeded", 42.0)
    telemetry.observe_trial("team-a", "mlp", "failed", 3.0)
    telemetry.observe_trial("team-a", "mlp", "early_stopped", 20.0)
    telemetry.observe_generation("team-a", "mlp", 12.5)
    telemetry.observe_step("team-a", "mlp", 0.05)
    telemetry.count_error("team-a", "mlp")
    for verb, resource, experiment in (
        ("get", "jobs", "mlp"),
        ("patch", "nasexperiments", "mlp"),
        ("watch", "pods", ""),
    ):
        telemetry.count_request(verb, resource, "team-a", experiment)
    telemetry.fit_wait.labels(namespace="team-a").observe(1.5)
    telemetry.leader.set(1)
    pool = FitPool(2)
    held = pool.slot("team-a", "mlp")  # one fit running: the pool's gauges have a namespace to report
    held.__enter__()
    HELD.append(held)  # a slot whose context is collected is released
    telemetry.live.add(live_metrics(pool, telemetry.requests, {}, lambda: None))
    return telemetry


def exercised_with_stages() -> Telemetry:
    """exercised(), plus a two-stage warm-started experiment and a single-objective one."""
    telemetry = exercised()
    two_stage = _status("Succeeded", 6, 0, 0.5).model_copy(
        update={
            "warm_start_trials": 12,
            "full_training": FullTrainingStatus(
                candidates=3, succeeded=2, failed=1, hypervolume=0.7, rank_correlation={"val_acc": 0.33}
            ),
        }
    )
    telemetry.observe_status("team-c", "staged", two_stage, state_bytes=4000)
    solo = _status("Running", 3, 1, 0.0).model_copy(update={"hypervolume": None, "best_value": 0.97})
    telemetry.observe_status("team-c", "solo", solo, state_bytes=1000)
    return telemetry


def test_series_follow_the_experiments_status() -> None:
    values = samples(exercised())
    a = {("namespace", "team-a"), ("experiment", "mlp")}
    assert values[("nas_experiments", frozenset({("phase", "Running")}))] == 1
    assert values[("nas_experiments", frozenset({("phase", "Succeeded")}))] == 1
    assert values[("nas_experiments", frozenset({("phase", "Failed")}))] == 0  # zeros are shown, not missing
    assert values[("nas_trials", frozenset(a | {("state", "succeeded")}))] == 4
    assert values[("nas_trials", frozenset(a | {("state", "running")}))] == 2
    assert values[("nas_hypervolume", frozenset(a))] == pytest.approx(0.61)
    assert values[("nas_trials", frozenset(a | {("state", "early_stopped")}))] == 3
    assert values[("nas_training_seconds_saved", frozenset(a))] == pytest.approx(1234.5)
    assert values[("nas_trial_duration_seconds_count", frozenset(a | {("outcome", "early_stopped")}))] == 1
    assert values[("nas_state_bytes", frozenset(a))] == 5120
    assert values[("nas_reconcile_errors_total", frozenset(a))] == 1
    assert values[("nas_candidate_generation_seconds_count", frozenset(a))] == 1
    assert values[("nas_candidate_generation_seconds_sum", frozenset(a))] == pytest.approx(12.5)
    succeeded = frozenset(a | {("outcome", "succeeded")})
    assert values[("nas_trial_duration_seconds_count", succeeded)] == 1
    assert values[("nas_trial_duration_seconds_bucket", frozenset(succeeded | {("le", "60.0")}))] == 1
    assert values[("nas_trial_duration_seconds_bucket", frozenset(succeeded | {("le", "30.0")}))] == 0


def test_a_phase_change_moves_the_experiment_between_phases() -> None:
    telemetry = exercised()
    telemetry.observe_status("team-a", "mlp", _status("Succeeded", 6, 0, 0.7), state_bytes=6000)
    values = samples(telemetry)
    assert values[("nas_experiments", frozenset({("phase", "Running")}))] == 0
    assert values[("nas_experiments", frozenset({("phase", "Succeeded")}))] == 2


def test_two_stage_single_objective_and_warm_start_series() -> None:
    values = samples(exercised_with_stages())
    c = {("namespace", "team-c"), ("experiment", "staged")}
    assert values[("nas_full_training_trials", frozenset(c | {("state", "succeeded")}))] == 2
    assert values[("nas_full_training_trials", frozenset(c | {("state", "failed")}))] == 1
    assert values[("nas_full_training_hypervolume", frozenset(c))] == pytest.approx(0.7)
    assert values[("nas_proxy_rank_correlation", frozenset(c | {("metric", "val_acc")}))] == pytest.approx(0.33)
    assert values[("nas_warm_start_trials", frozenset(c))] == 12
    assert values[("nas_best_value", frozenset({("namespace", "team-c"), ("experiment", "solo")}))] == 0.97


def test_a_deleted_experiment_leaves_no_series_behind() -> None:
    telemetry = exercised_with_stages()
    telemetry.forget("team-a", "mlp")
    telemetry.forget("team-c", "staged")
    telemetry.forget("team-c", "solo")
    values = samples(telemetry)
    assert not [key for key in values if ("experiment", "staged") in key[1]]
    assert not [key for key in values if ("experiment", "mlp") in key[1]]
    assert [key for key in values if ("experiment", "cnn") in key[1]]
    assert values[("nas_experiments", frozenset({("phase", "Running")}))] == 0


def test_promtool_finds_the_exposition_clean() -> None:
    exposition = generate_latest(exercised_with_stages().registry).decode()
    assert promtool_problems(exposition) == ""
    # and it is a real check: a counter without _total and a bad name are reported
    assert promtool_problems("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n")


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bnas_[a-z_]+\b", expression))


def test_every_dashboard_query_refers_to_a_metric_the_operator_exports() -> None:
    exported = {sample[0] for sample in samples(exercised_with_stages())}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    assert len(expressions) >= 10
    used = set().union(*(_metric_names(e) for e in expressions))
    assert used - exported == set(), f"queries name metrics that do not exist: {used - exported}"
    # the panels: phases, trials over time, hypervolume, generation latency, errors
    for required in (
        "nas_experiments",
        "nas_trials",
        "nas_hypervolume",
        "nas_candidate_generation_seconds_bucket",
        "nas_reconcile_errors_total",
    ):
        assert required in used, required


def test_dashboard_panels_do_not_overlap_and_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_chart_ships_the_dashboard_file_the_tests_check() -> None:
    template = (ROOT / "charts" / "nas-operator" / "templates" / "grafana-dashboard.yaml").read_text()
    assert '.Files.Get "dashboards/nas-operator.json"' in template
    assert Path(DASHBOARD).is_file()
