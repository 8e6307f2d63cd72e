"""One objective: a plain hyperparameter search through the same loop, with the best trial in place of a front."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint
from nas_operator.core.status import build_status
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.storage.store import FileStore

pytestmark = pytest.mark.engine

# The trial: a bowl with its minimum at (0.3, 0.7), reported by termination message (no braces: placeholders).
TRIAL = (
    "import json, os, sys\n"
    "x, y = float(sys.argv[1]), float(sys.argv[2])\n"
    "loss = (x - 0.3) ** 2 + (y - 0.7) ** 2\n"
    "open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w').write(json.dumps(dict(loss=loss, size=x + y)))\n"
)


def single_doc(**budget: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nas.operator.dev/v1alpha1",
        "kind": "NASExperiment",
        "metadata": {"name": "bowl"},
        "spec": {
            "parameters": [
                {"name": "x", "type": "range", "lower": 0.0, "upper": 1.0},
                {"name": "y", "type": "range", "lower": 0.0, "upper": 1.0},
            ],
            "objectives": [{"metric": "loss", "goal": "minimize", "threshold": 0.5}],
            "metrics": {"source": "terminationMessage"},
            "budget": {"maxTrials": 10, "parallelism": 2, **budget},
            "algorithm": {"name": "auto", "seed": 3, "initialTrials": 4},
            "trial": {"command": [sys.executable, "-c", TRIAL], "args": ["{x}", "{y}"]},
        },
    }


def test_the_status_names_the_best_feasible_trial_and_no_front() -> None:
    spec = load_experiment(single_doc(), cluster=False).spec
    state = LoopState("bowl", spec_fingerprint(spec))
    for index, loss in enumerate([0.4, 0.9, 0.1, 0.1]):  # 0.9 misses the threshold; a tie goes to the first
        state.trials[index] = TrialRecord(
            index=index, name=f"bowl-t{index}", parameters={"x": 0.1, "y": 0.2}, generator="Sobol",
            status="succeeded", metrics={"loss": loss},
        )  # fmt: skip
    status = build_status(spec, state)
    assert status.best_trial is not None and status.best_trial.trial == "bowl-t2" and status.best_value == 0.1
    assert status.pareto_front == [] and status.pareto_size is None and status.hypervolume is None
    shown = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert shown["bestTrial"]["trial"] == "bowl-t2" and "paretoSize" not in shown


def test_a_single_objective_search_runs_to_a_model_based_best_trial(tmp_path: Path) -> None:
    spec_path = tmp_path / "bowl.yaml"
    spec_path.write_text(yaml.safe_dump(single_doc()))
    results = tmp_path / "results"
    command = [sys.executable, "-m", "nas_operator.cli", "run", str(spec_path), "--results", str(results)]
    done = subprocess.run([*command, "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = FileStore(results).load()
    assert stored is not None
    trials = sorted(stored.state.trials.values(), key=lambda t: t.index)
    assert [t.status for t in trials] == ["succeeded"] * 10
    # Ax's single-objective model took over after the initial trials: a threshold on the one objective is ours,
    # never handed to Ax (it refuses a constraint on its objective)
    assert {t.generator for t in trials[4:]} == {"MBM"}
    best = min(trials, key=lambda t: (t.metrics["loss"], t.index))
    document = json.loads((results / "pareto.json").read_text())
    assert document["bestTrial"]["trial"] == best.name and document["bestValue"] == best.metrics["loss"]
    assert document["paretoFront"] == [] and document["hypervolume"] is None
    assert best.metrics["loss"] < 0.05  # the model found the bowl's bottom region in 6 model-based trials
    assert (results / "best.png").stat().st_size > 10_000 and (results / "best.html").exists()
    assert not (results / "pareto.png").exists()
    output = " ".join(done.stdout.split())
    assert "Best trial of bowl" in output and f"t{best.index}" in output and "best.png" in output
