"""`nasctl run` end to end on the real trainer: results, resume after an interrupt, refusing bad specs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas_operator.core.loop import restore_engine
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.storage.store import FileStore

from .conftest import EXAMPLES, load_yaml, toy_doc

pytestmark = pytest.mark.e2e
NASCTL = [sys.executable, "-m", "nas_operator.cli"]


def _small_digits(tmp_path: Path, max_trials: int, parallelism: int) -> Path:
    doc: dict[str, Any] = load_yaml(EXAMPLES / "digits-mlp.yaml")
    spec = doc["spec"]
    spec["budget"].update(maxTrials=max_trials, parallelism=parallelism)
    spec["algorithm"].update(initialTrials=2)
    spec["objectives"][0]["threshold"] = 0.1  # a few epochs only: keep the front non-empty
    for parameter in spec["parameters"]:
        if parameter["name"] == "epochs":
            parameter.update(lower=1, upper=3)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NASCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_run_produces_a_front_plots_and_real_tensorboard_logs(tmp_path: Path) -> None:
    spec_path = _small_digits(tmp_path, max_trials=4, parallelism=2)
    results = tmp_path / "results"
    done = _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pareto front of digits-mlp" in done.stdout
    assert "BudgetExhausted" in done.stdout

    pareto = json.loads((results / "pareto.json").read_text())
    assert pareto["phase"] == "Succeeded" and pareto["trials"]["total"] == 4
    assert pareto["paretoFront"], "at least one trial is inside the thresholds"
    for point in pareto["paretoFront"]:
        assert point["metrics"]["val_acc"] >= 0.1 and point["metrics"]["num_params"] <= 12000
    rows = list(csv.DictReader((results / "trials.csv").open()))
    assert [r["status"] for r in rows] == ["succeeded"] * 4
    assert {r["generator"] for r in rows} >= {"CenterOfSearchSpace", "Sobol"}
    assert (results / "pareto.png").stat().st_size > 10_000
    assert "plotly" in (results / "pareto.html").read_text()
    for row in rows:
        events = list((results / "tensorboard" / row["trial"]).rglob("events.out.tfevents.*"))
        assert events, row["trial"]
        assert float(row["num_params"]) == pytest.approx(_num_params(row))

    again = _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert again.returncode == 0 and "Resuming" in again.stdout
    assert len(list(csv.DictReader((results / "trials.csv").open()))) == 4  # nothing ran again


def _num_params(row: dict[str, str]) -> int:
    h1, h2 = int(row["hidden_size_1"]), int(row["hidden_size_2"])
    return 64 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10


def _state(results: Path) -> dict[str, Any] | None:
    try:
        stored = FileStore(results).load()
    except Exception:  # being replaced right now
        return None
    return None if stored is None else stored.state.to_json()


def test_interrupt_then_resume_runs_each_trial_exactly_once_to_a_result(tmp_path: Path) -> None:
    spec_path = _small_digits(tmp_path, max_trials=4, parallelism=2)
    results = tmp_path / "results"
    process = subprocess.Popen(
        [*NASCTL, "run", str(spec_path), "--results", str(results), "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    interrupted_running: list[str] = []
    while time.monotonic() < deadline:
        state = _state(results)
        if state:
            statuses = [t["status"] for t in state["trials"]]
            running = [t["name"] for t in state["trials"] if t["status"] == "running"]
            # A trial is persisted as running just before its process starts (persist-before-launch); wait for
            # the processes themselves so that the interrupt below has something to kill.
            launched = all((results / "trials" / name / "attempt-0" / "pid").exists() for name in running)
            if "succeeded" in statuses and running and launched:
                interrupted_running = running
                break
        time.sleep(0.2)
    assert interrupted_running, "never saw a finished and a running trial together"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Interrupted." in output

    state = _state(results)
    assert state is not None and (state["phase"], state["reason"]) == ("Stopped", "Interrupted")
    killed = {t["name"] for t in state["trials"] if t["status"] == "queued" and t["attempt"] == 1}
    assert killed, state["trials"]
    assert set(interrupted_running) <= killed, (interrupted_running, state["trials"])
    for name in killed:  # their processes are gone, not orphaned
        pid_file = results / "trials" / name / "attempt-0" / "pid"
        if name not in interrupted_running and not pid_file.exists():
            continue  # persisted as running after the snapshot above, interrupted before its launch
        pid = int(pid_file.read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

    resumed = _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    stored = FileStore(results).load()
    assert stored is not None
    final = stored.state
    assert (final.phase, final.reason) == ("Succeeded", "BudgetExhausted")
    assert sorted(final.trials) == [0, 1, 2, 3]
    assert all(t.status == "succeeded" for t in final.trials.values())
    for name in killed:  # relaunched as the next attempt, under the same trial index
        assert (results / "trials" / name / "attempt-1" / "exit_code").read_text().strip() == "0"
    succeeded_before = {t["name"] for t in state["trials"] if t["status"] == "succeeded"}
    for name in succeeded_before:  # a finished trial is never run again
        assert not (results / "trials" / name / "attempt-1").exists()
    spec = load_experiment(yaml.safe_load(spec_path.read_text())).spec
    engine = restore_engine(spec, stored.engine, stored.state)
    assert engine.trial_statuses() == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "COMPLETED"}


def test_a_changed_search_space_is_not_resumed_silently(tmp_path: Path) -> None:
    spec_path = _small_digits(tmp_path, max_trials=2, parallelism=2)
    results = tmp_path / "results"
    assert _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path).returncode == 0
    doc = yaml.safe_load(spec_path.read_text())
    doc["spec"]["objectives"][1]["threshold"] = 5000
    spec_path.write_text(yaml.safe_dump(doc))
    refused = _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert refused.returncode == 1
    assert "different search space" in refused.stderr and "--fresh" in refused.stderr


def test_run_refuses_a_bad_spec_with_every_problem(tmp_path: Path) -> None:
    doc = load_yaml(EXAMPLES / "digits-mlp.yaml")
    doc["spec"]["budget"]["maxTrials"] = 2
    doc["spec"]["objectives"][0]["goal"] = "up"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = _run(["run", str(path)], cwd=tmp_path)
    assert refused.returncode == 1
    assert "spec.objectives[0].goal" in refused.stderr
    assert not (tmp_path / "nas-results").exists()


def test_trainer_writes_termination_message(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_trainer.mlp",
            "--epochs=1",
            f"--log-dir={tmp_path / 'tb'}",
            "--dataset=digits",
            "--latency-repeats=20",
            f"--termination-message-path={message}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(message.read_text())
    assert set(metrics) >= {"val_acc", "num_params", "latency_p99_ms"}
    assert metrics["num_params"] == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10


def test_a_termination_message_spec_runs_locally_and_says_what_it_ignores(tmp_path: Path) -> None:
    """The issue's first report: metrics.source terminationMessage under `nasctl run` failed every trial."""
    spec_path = _small_digits(tmp_path, max_trials=2, parallelism=2)
    doc = yaml.safe_load(spec_path.read_text())
    doc["spec"]["metrics"]["source"] = "terminationMessage"
    doc["spec"]["trial"]["args"].append("--latency-repeats=20")
    spec_path.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    done = _run(["run", str(spec_path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = FileStore(results).load()
    assert stored is not None and [t.status for t in stored.state.trials.values()] == ["succeeded"] * 2
    for trial in stored.state.trials.values():
        message = json.loads((results / "trials" / trial.name / "attempt-0" / "termination-log").read_text())
        assert trial.metrics["num_params"] == message["num_params"] == _num_params(trial.parameters)
        assert trial.metrics["val_acc"] == message["val_acc"]
    # said once, at the start, with the reason
    output = " ".join(done.stdout.split())  # rich wraps lines at 80 columns off a terminal
    for field in ("spec.trial.image", "spec.metrics.claimName", "spec.trial.resources.cpu/memory"):
        assert output.count(f"Ignored locally: {field}:") == 1, output
    assert output.index("Ignored locally") < output.index("TrialLaunched")


def _gpu_toy(tmp_path: Path, gpus_per_trial: int, parallelism: int, max_trials: int, seconds: float) -> Path:
    """The toy experiment, each trial recording its CUDA_VISIBLE_DEVICES and when it ran, reporting by message
    (no braces in the script: those are placeholders)."""
    doc = toy_doc(maxTrials=max_trials, parallelism=parallelism)
    script = (
        "import json, os, sys, time\n"
        "start = time.time()\n"
        f"time.sleep({seconds})\n"
        "record = dict(devices=os.environ['CUDA_VISIBLE_DEVICES'], start=start, end=time.time())\n"
        "open(os.path.join(sys.argv[3], 'record.json'), 'w').write(json.dumps(record))\n"
        "x, y = float(sys.argv[1]), float(sys.argv[2])\n"
        "open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w').write(json.dumps(dict(f1=x, f2=y)))\n"
    )
    doc["spec"]["trial"].update(command=["python", "-c", script], args=["{x}", "{y}", "{trial_dir}"])
    doc["spec"]["trial"]["resources"] = {"gpu": gpus_per_trial}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _records(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((results / "trials").glob("*/record.json"))]


def test_gpus_are_handed_out_per_trial_capped_and_kept_across_a_crash(tmp_path: Path) -> None:
    spec_path = _gpu_toy(tmp_path, gpus_per_trial=2, parallelism=3, max_trials=5, seconds=3.0)
    results = tmp_path / "results"
    env = {**os.environ, "NAS_STANDIN_GPUS": "5"}
    command = [*NASCTL, "run", str(spec_path), "--results", str(results), "--no-progress"]
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while True:  # two trials running (the cap: 5 GPUs, 2 per trial), their processes started
        state = _state(results)
        running = [t["name"] for t in (state or {}).get("trials", []) if t["status"] == "running"]
        if len(running) == 2 and all((results / "trials" / n / "attempt-0" / "pid").exists() for n in running):
            break
        assert time.monotonic() < deadline and first.poll() is None, state
        time.sleep(0.05)
    first.kill()  # nasctl dies, its trials run on
    output, _ = first.communicate(timeout=30)
    output = " ".join(output.split())  # rich wraps lines at 80 columns off a terminal
    assert output.count("Parallelism 2, not spec.budget.parallelism=3") == 1, output
    assert "stand-in inventory NAS_STANDIN_GPUS=5" in output

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    stored = FileStore(results).load()
    assert stored is not None and [t.status for t in stored.state.trials.values()] == ["succeeded"] * 5
    for name in running:  # adopted, never started a second time
        assert not (results / "trials" / name / "attempt-1").exists()
    records = _records(results)
    assert len(records) == 5
    for record in records:
        devices = record["devices"].split(",")
        assert len(devices) == 2 and set(devices) <= {"0", "1", "2", "3", "4"}, record
    for a in records:  # trials that ran at the same time, across both nasctl processes, never shared a device
        overlapping = [b for b in records if b is not a and b["start"] < a["end"] and a["start"] < b["end"]]
        assert len(overlapping) <= 1, records
        for b in overlapping:
            assert not set(a["devices"].split(",")) & set(b["devices"].split(",")), (a, b)


def test_trials_that_ask_no_gpu_see_none(tmp_path: Path) -> None:
    spec_path = _gpu_toy(tmp_path, gpus_per_trial=0, parallelism=2, max_trials=2, seconds=0)
    results = tmp_path / "results"
    env = {**os.environ, "NAS_STANDIN_GPUS": "2"}
    done = _run_env(["run", str(spec_path), "--results", str(results), "--no-progress"], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["devices"] for r in _records(results)] == ["", ""]


def test_a_spec_asking_more_gpus_per_trial_than_the_machine_has_is_refused(tmp_path: Path) -> None:
    spec_path = _gpu_toy(tmp_path, gpus_per_trial=2, parallelism=1, max_trials=2, seconds=0)
    results = tmp_path / "results"
    env = {**os.environ, "NAS_STANDIN_GPUS": "1"}
    refused = _run_env(["run", str(spec_path), "--results", str(results), "--no-progress"], tmp_path, env)
    assert refused.returncode == 1
    assert "spec.trial.resources.gpu: each trial asks for 2 GPU(s), this machine has 1" in refused.stderr
    assert not results.exists()  # refused before anything was written


def _run_env(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NASCTL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_run_stops_hopeless_trials_early_from_their_curves(tmp_path: Path) -> None:
    """Real processes writing real torch event files; the rule stops dominated ones, kills them, and says so."""
    doc = toy_doc(maxTrials=8, parallelism=1)
    spec = doc["spec"]
    spec["objectives"] = [
        {"metric": "acc", "goal": "maximize", "threshold": 0.3},
        {"metric": "params", "goal": "minimize", "threshold": 1200.0},
    ]
    spec["metrics"] = {"source": "tensorboard", "definitions": [{"name": "acc", "reduce": "max"}, {"name": "params"}]}
    spec["earlyStopping"] = {"progression": "epoch", "minProgression": 2, "minReferenceTrials": 2}
    spec["trial"]["command"] = [sys.executable, str(Path(__file__).parent / "curve_trial.py")]
    spec["trial"]["args"] = ["--x={x}", "--y={y}", "--epochs=12", "--seconds-per-epoch=0.3", "--log-dir={log_dir}"]
    path = tmp_path / "curves.yaml"
    path.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    done = _run(["run", str(path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TrialEarlyStopped" in done.stdout

    rows = list(csv.DictReader((results / "trials.csv").open()))
    assert len(rows) == 8
    stopped = [r for r in rows if r["status"] == "earlyStopped"]
    finished = [r for r in rows if r["status"] == "succeeded"]
    assert stopped and len(stopped) + len(finished) == 8, [(r["status"], r["reason"]) for r in rows]
    pareto = json.loads((results / "pareto.json").read_text())
    assert pareto["trials"]["earlyStopped"] == len(stopped) and pareto["trials"]["total"] == 8
    for row in stopped:
        assert "stopped early at epoch" in row["reason"], row
        assert 2 <= float(row["progression"]) < 11
        # the rule's promise, checked against the truth: the trial's real final point was dominated by a finished
        # trial, or missed a threshold
        x, y = float(row["x"]), float(row["y"])
        final_acc, params = 0.5 + 0.4 * x, round(1000.0 * (0.1 + y))
        dominated = any(
            float(f["acc"]) >= final_acc * (1 - 0.6 * 0.7**11) and float(f["params"]) <= params for f in finished
        )
        assert dominated or params > 1200, row
        # killed: its process wrote fewer epochs than the twelve it would have
        events = list((results / "tensorboard" / row["trial"]).rglob("events.out.tfevents.*"))
        from nas_operator.core.metrics import read_scalars

        curve = read_scalars(events[0].parent, ["acc"])["acc"]
        assert len(curve) < 12, row
    assert (results / "pareto.png").stat().st_size > 10_000

    again = _run(["run", str(path), "--results", str(results), "--no-progress"], cwd=tmp_path)
    assert again.returncode == 0 and "Resuming" in again.stdout
    assert [r["status"] for r in csv.DictReader((results / "trials.csv").open())] == [r["status"] for r in rows]
