"""bench/early_stopping.py: its quick mode runs every contender end to end, and its Katib rule is the documented one."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "early_stopping.py"
CONTENDERS = ("none", "ours", "Ax percentile", "Katib median")


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_early_stopping", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_katib_median_rule_and_curve_shape() -> None:
    bench = _bench()
    done = [[0.2, 0.4, 0.6, 0.8], [0.4, 0.6, 0.8, 0.9], [0.1, 0.3, 0.5, 0.7]]  # running averages at 3: .4, .6, .3
    # best by step 3 is 0.39 < median 0.4: stopped; 0.41 is not; equal is not ("strictly worse")
    assert bench.katib_median_stop([0.1, 0.39, 0.2], done, minimize=False, start_step=3, min_trials=3)
    assert not bench.katib_median_stop([0.1, 0.41, 0.2], done, minimize=False, start_step=3, min_trials=3)
    assert not bench.katib_median_stop([0.1, 0.4, 0.2], done, minimize=False, start_step=3, min_trials=3)
    # before start_step, or with fewer completed trials than required: never
    assert not bench.katib_median_stop([0.0, 0.0], done, minimize=False, start_step=3, min_trials=3)
    assert not bench.katib_median_stop([0.0, 0.0, 0.0], done[:2], minimize=False, start_step=3, min_trials=3)
    # minimised: the best is the smallest value, worse means larger
    assert bench.katib_median_stop([0.9, 0.45, 0.5], done, minimize=True, start_step=3, min_trials=3)
    assert not bench.katib_median_stop([0.9, 0.35, 0.5], done, minimize=True, start_step=3, min_trials=3)
    # the curve starts untrained and ends exactly at the final value; a slow starter is further from it half-way
    assert bench.curve_value(0.1, 0.9, 2.0, 0, 20) == pytest.approx(0.1)
    assert bench.curve_value(0.1, 0.9, 2.0, 20, 20) == pytest.approx(0.9)
    assert bench.curve_value(0.1, 0.9, 10.0, 5, 20) < bench.curve_value(0.1, 0.9, 2.0, 5, 20) < 0.9


@pytest.mark.engine
def test_quick_mode_runs_every_contender_and_reports_the_targets(tmp_path: Path) -> None:
    out, log = tmp_path / "runs.json", tmp_path / "runs.jsonl"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out), "--log", str(log)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = completed.stdout
    assert "| contender | training compute (steps) | compute / none |" in text
    assert "| contender | trials launched | trials completed |" in text
    for name in CONTENDERS:  # a row in the N-trial table and in the equal-compute table
        assert text.count(f"| {name} | ") == 2, name
    targets = [line for line in text.splitlines() if "target 1" in line or "target 2" in line]
    assert len(targets) == 2 and all(" MET: " in line or " NOT MET: " in line for line in targets)

    payload = json.loads(out.read_text())
    settings, runs = payload["settings"], payload["runs"]
    steps, trials, budget = settings["steps"], settings["trials"], settings["budget"]
    seeds = range(payload["settings"]["seeds"])
    by = {(r["unit"]["contender"], r["unit"]["mode"], r["unit"]["seed"]): r for r in runs}
    assert set(by) == {(c, m, s) for c in CONTENDERS for m in ("trials", "compute") for s in seeds}
    # --log holds every run that ran (none's equal-compute rows are derived from its N-trial runs), for --resume
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == len(runs) - len(seeds)
    assert all(entry["code"] == payload["code"] and entry["settings"].items() <= settings.items() for entry in logged)

    for run in runs:
        assert math.isfinite(run["regret"]) and run["regret"] > -12  # HV of the truth never exceeds the known maximum
        for trial in run["trials"]:
            assert 1 <= trial["progression"] <= steps
            if trial["status"] == "stopped":  # nobody stops a trial before the minimum progression
                assert trial["progression"] >= 3 and trial["progression"] < steps
            else:
                assert trial["status"] == "completed" and trial["progression"] == steps
        if run["unit"]["mode"] == "compute":
            assert run["compute"] <= budget
        else:
            assert run["launched"] == trials
    for seed in seeds:
        none = by[("none", "trials", seed)]
        assert none["compute"] == trials * steps and none["stopped"] == 0
    mean_compute = {c: sum(by[(c, "trials", s)]["compute"] for s in seeds) for c in CONTENDERS}
    assert mean_compute["ours"] < mean_compute["none"]
    for name in ("ours", "Ax percentile", "Katib median"):  # every stopping policy did stop something
        assert sum(by[(name, mode, s)]["stopped"] for mode in ("trials", "compute") for s in seeds) > 0, name
