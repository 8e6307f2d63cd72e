"""Trials as real local processes: exit codes, log tails, timeouts, adoption after a crash, retries."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nas_operator.backends.local import LocalBackend, group_members
from nas_operator.core.backend import render_launch
from nas_operator.core.metrics import event_files, read_tensorboard_metrics
from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import MetricDefinition, TrialTemplate


def _trial(index: int = 0, attempt: int = 0) -> TrialRecord:
    return TrialRecord(
        index=index, name=f"exp-t{index}", parameters={"x": 0.25, "flag": True}, generator="t", attempt=attempt
    )


def _launch(backend: LocalBackend, trial: TrialRecord, script: str, retries: int = 0) -> None:
    template = TrialTemplate(command=["python", "-c", script, "{x}", "{flag}", "{log_dir}"], retries=retries)
    log_dir = backend.log_dir("exp", trial.name)
    trial.handle = backend.launch(render_launch("exp", trial, template, str(log_dir), str(log_dir), None))


def _wait(backend: LocalBackend, trial: TrialRecord, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        observation = backend.poll(trial)
        if observation.handle is not None:
            trial.handle = observation.handle
        if observation.status != "running":
            return f"{observation.status}:{observation.exit_code}:{observation.message}"
        time.sleep(0.05)
    raise AssertionError("trial did not end")


def test_success_with_rendered_arguments_env_and_own_log_dir(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    script = (
        "import os, sys, pathlib; "
        "pathlib.Path(sys.argv[3], 'out.txt').write_text(' '.join(sys.argv[1:3]) + ' ' + os.environ['NAS_TRIAL_NAME'])"
    )
    _launch(backend, trial, script)
    assert _wait(backend, trial).startswith("succeeded:0")
    assert (tmp_path / "tensorboard" / "exp-t0" / "out.txt").read_text() == "0.25 true exp-t0"


def test_a_non_zero_exit_gives_the_code_and_the_last_log_lines(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    _launch(backend, trial, "import sys; print('loading data'); sys.stderr.write('CUDA out of memory\\n'); sys.exit(3)")
    result = _wait(backend, trial)
    assert result.startswith("failed:3:exit code 3")
    assert "CUDA out of memory" in result
    assert (tmp_path / "trials" / "exp-t0" / "attempt-0" / "stdout.log").read_text() == "loading data\n"


def test_kill_stops_the_whole_process_group(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    _launch(
        backend,
        trial,
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)",
    )
    time.sleep(1.0)
    pgid = int(trial.handle["pid"])
    backend.kill(trial)
    assert backend.poll(trial).status == "failed"
    assert len(group_members(pgid)) == 0


def test_a_new_backend_adopts_a_running_trial_and_reads_its_exit_code(tmp_path: Path) -> None:
    first = LocalBackend(tmp_path)
    trial = _trial()
    _launch(first, trial, "import time, sys; time.sleep(1.5); sys.exit(4)")
    # nasctl died: a new process, knowing only the saved handle, sees it run and end.
    second = LocalBackend(tmp_path)
    assert second.poll(trial).status == "running"
    relaunched = second.launch(render_launch("exp", trial, TrialTemplate(command=["false"]), "x", "x", None))
    assert relaunched["pid"] == trial.handle["pid"]  # adopted, not started again
    assert _wait(second, trial).startswith("failed:4")


def test_retries_run_again_then_fail(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    counter = tmp_path / "count"
    script = (
        f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); "
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); sys.exit(2)"
    )
    _launch(backend, trial, script, retries=2)
    assert _wait(backend, trial).startswith("failed:2")
    assert counter.read_text() == "xxx"
    assert (tmp_path / "trials" / "exp-t0" / "attempt-0" / "retry-2" / "exit_code").read_text().strip() == "2"


def test_a_process_that_vanishes_without_status_is_failed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    _launch(backend, trial, "import time; time.sleep(300)")
    time.sleep(0.5)
    os.killpg(int(trial.handle["pid"]), 9)
    result = _wait(backend, trial)
    assert result.startswith("failed:None:process") and "without an exit status" in result


def test_bare_python_runs_in_this_environment(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    trial = _trial()
    _launch(backend, trial, f"import sys; sys.exit(0 if sys.executable == {sys.executable!r} else 9)")
    assert _wait(backend, trial).startswith("succeeded")


def _tensorboard_trial(counter: Path, first: str, then: str) -> str:
    """A trial script whose first run does `first` and every later run `then`; both may use `log_dir` and `run`."""
    return (
        "import os, pathlib, subprocess, sys, time\n"
        "from tensorboard.compat.proto import event_pb2\n"
        "from nas_operator.core.event_records import frame\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "run = len(counter.read_text()) if counter.exists() else 0\n"
        "counter.write_text('x' * (run + 1))\n"
        "log_dir = pathlib.Path(sys.argv[3])\n"
        f"exec({first!r} if run == 0 else {then!r})\n"
    )


# One scalar event file, framed as a writer frames it (torch's SummaryWriter would cost seconds of import per run).
_WRITE_ACC = (
    "event = event_pb2.Event(step=run, wall_time=time.time())\n"
    "event.summary.value.add(tag='val_acc', simple_value={value})\n"
    "(log_dir / f'events.out.tfevents.{{time.time()}}.{{os.getpid()}}').write_bytes(frame(event.SerializeToString()))\n"
)


def test_a_retry_never_reads_the_failed_runs_events(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "results")
    trial = _trial()
    script = _tensorboard_trial(
        tmp_path / "count",
        first=_WRITE_ACC.format(value=0.99) + "sys.exit(1)",
        then=_WRITE_ACC.format(value=0.5),
    )
    _launch(backend, trial, script, retries=1)
    deadline = time.monotonic() + 60
    while (observation := backend.poll(trial)).status == "running" and time.monotonic() < deadline:
        trial.handle = observation.handle or trial.handle
        time.sleep(0.05)
    assert observation.status == "succeeded"
    assert observation.log_dir == backend.log_dir("exp", trial.name)
    assert (tmp_path / "count").read_text() == "xx"
    # reduce=max over the log dir: the failed first run's 0.99 must be gone.
    assert read_tensorboard_metrics(observation.log_dir, [MetricDefinition(name="val_acc", reduce="max")]) == {
        "val_acc": 0.5
    }
    assert len(event_files(observation.log_dir)) == 1


def test_a_retry_kills_what_the_failed_run_left_writing_into_the_log_dir(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "results")
    trial = _trial()
    late = "import sys, time; time.sleep(1.0); open(sys.argv[1], 'w')"
    straggler = f"subprocess.Popen([sys.executable, '-c', {late!r}, str(log_dir / 'late.txt')]); sys.exit(1)"
    script = _tensorboard_trial(tmp_path / "count", first=straggler, then="time.sleep(2.5)")
    _launch(backend, trial, script, retries=1)
    assert _wait(backend, trial).startswith("succeeded")
    assert not (backend.log_dir("exp", trial.name) / "late.txt").exists()


def test_a_log_dir_replaced_by_a_link_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "other-team"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    backend = LocalBackend(tmp_path / "results")
    trial = _trial()
    hijack = f"import shutil; shutil.rmtree(log_dir); log_dir.symlink_to({str(victim)!r}); sys.exit(1)"
    script = _tensorboard_trial(tmp_path / "count", first=hijack, then="assert not any(log_dir.iterdir())")
    _launch(backend, trial, script, retries=1)
    assert _wait(backend, trial).startswith("succeeded")
    log_dir = backend.log_dir("exp", trial.name)
    assert log_dir.is_dir() and not log_dir.is_symlink()
    assert (victim / "precious").read_text() == "keep me"


def test_a_new_attempt_starts_with_an_empty_log_dir(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "results")
    script = _tensorboard_trial(
        tmp_path / "count", first=_WRITE_ACC.format(value=0.99), then=_WRITE_ACC.format(value=0.5)
    )
    first = _trial(attempt=0)
    _launch(backend, first, script)
    assert _wait(backend, first).startswith("succeeded")
    second = _trial(attempt=1)  # the loop relaunches a trial as a new attempt after an interruption
    _launch(backend, second, script)
    assert _wait(backend, second).startswith("succeeded")
    log_dir = backend.log_dir("exp", second.name)
    assert read_tensorboard_metrics(log_dir, [MetricDefinition(name="val_acc", reduce="max")]) == {"val_acc": 0.5}


def test_a_retry_started_before_a_crash_is_adopted_not_run_again(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "results")
    trial = _trial()
    script = _tensorboard_trial(tmp_path / "count", first="sys.exit(3)", then="time.sleep(1.5)")
    _launch(backend, trial, script, retries=2)
    saved = dict(trial.handle)  # what the state store holds: the first run's handle
    deadline = time.monotonic() + 30
    while (observation := backend.poll(trial)).handle is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert observation.handle is not None and observation.handle["retry"] == 1
    # nasctl died before saving the retry's handle: a new process polls with the old one.
    restarted = LocalBackend(tmp_path / "results")
    trial.handle = saved
    adopted = restarted.poll(trial)
    assert adopted.status == "running" and adopted.handle is not None
    assert (adopted.handle["pid"], adopted.handle["retry"]) == (observation.handle["pid"], 1)
    trial.handle = adopted.handle
    assert _wait(restarted, trial).startswith("succeeded")
    assert (tmp_path / "count").read_text() == "xx"
