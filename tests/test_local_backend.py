"""Trials as real local processes: exit codes, log tails, timeouts, adoption after a crash, retries, termination
messages read with the kubelet's rules, GPUs handed out through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path

import pytest

from nas_operator.backends.gpus import GpuInventory, GpuPool
from nas_operator.backends.local import LocalBackend, group_members
from nas_operator.core.backend import Observation, TransientLaunchError, render_launch
from nas_operator.core.metrics import (
    MetricsError,
    event_files,
    parse_termination_message,
    read_tensorboard_metrics,
)
from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import MetricDefinition, Resources, TrialTemplate


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


# ----------------------------------------------------------------------------- termination messages

VAL_ACC = [MetricDefinition(name="val_acc")]
_WRITE_MESSAGE = "import os, sys; open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w').write({text!r})"


def _finish(backend: LocalBackend, trial: TrialRecord, timeout: float = 60.0) -> Observation:
    deadline = time.monotonic() + timeout
    while (observation := backend.poll(trial)).status == "running":
        assert time.monotonic() < deadline, "trial did not end"
        trial.handle = observation.handle or trial.handle
        time.sleep(0.05)
    return observation


def test_a_trial_reports_through_its_termination_message_as_on_kubernetes(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, termination_messages=True)
    trial = _trial()
    _launch(backend, trial, _WRITE_MESSAGE.format(text='{"val_acc": 0.93, "extra": [1]}'))
    observation = _finish(backend, trial)
    assert observation.status == "succeeded"
    assert observation.termination_message == '{"val_acc": 0.93, "extra": [1]}'
    assert parse_termination_message(observation.termination_message, VAL_ACC) == {"val_acc": 0.93}
    path = tmp_path / "trials" / "exp-t0" / "attempt-0" / "termination-log"
    assert path.read_text() == observation.termination_message  # each run's own file, kept with its logs


def test_a_trial_that_writes_nothing_has_an_empty_message_and_no_variable_without_the_source(tmp_path: Path) -> None:
    silent = LocalBackend(tmp_path / "a", termination_messages=True)
    trial = _trial()
    _launch(silent, trial, "pass")
    assert _finish(silent, trial).termination_message == ""  # the kubelet's empty file
    tensorboard = LocalBackend(tmp_path / "b")  # metrics.source tensorboard: as on Kubernetes, no variable at all
    trial = _trial()
    _launch(tensorboard, trial, "import os, sys; sys.exit(5 if 'NAS_TERMINATION_MESSAGE_PATH' in os.environ else 0)")
    observation = _finish(tensorboard, trial)
    assert observation.status == "succeeded" and observation.termination_message is None


def test_only_the_last_4096_bytes_are_kept_as_the_kubelet_keeps_them(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, termination_messages=True)
    write = "import os, sys; open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w').write({})"
    # 6000 spaces, then a JSON object: its tail is a whole object, read as the cluster reads it
    trial = _trial(0)
    _launch(backend, trial, write.format("' ' * 6000 + '{\"val_acc\": 0.5}'"))
    message = _finish(backend, trial).termination_message
    assert message is not None and len(message.encode()) == 4096
    assert parse_termination_message(message, VAL_ACC) == {"val_acc": 0.5}
    # a JSON object of 6000+ bytes: cut at its start, it is not JSON any more
    trial = _trial(1)
    _launch(backend, trial, write.format("'{\"val_acc\": 0.5, \"log\": \"' + 'x' * 6000 + '\"}'"))
    message = _finish(backend, trial).termination_message
    assert message is not None and len(message.encode()) == 4096
    with pytest.raises(MetricsError, match="not JSON"):
        parse_termination_message(message, VAL_ACC)


def test_a_link_or_fifo_in_place_of_the_message_is_neither_followed_nor_waited_on(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"val_acc": 1.0}')
    backend = LocalBackend(tmp_path / "results", termination_messages=True)
    link = _trial(0)
    _launch(
        backend,
        link,
        f"import os; p = os.environ['NAS_TERMINATION_MESSAGE_PATH']; os.unlink(p); os.symlink({str(secret)!r}, p)",
    )
    assert _finish(backend, link).termination_message is None
    fifo = _trial(1)
    _launch(backend, fifo, "import os; p = os.environ['NAS_TERMINATION_MESSAGE_PATH']; os.unlink(p); os.mkfifo(p)")
    started = time.monotonic()
    assert _finish(backend, fifo).termination_message is None
    assert time.monotonic() - started < 30


def test_each_retry_gets_a_fresh_message_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "results", termination_messages=True)
    trial = _trial()
    script = _tensorboard_trial(
        tmp_path / "count",
        first="open(os.environ['NAS_TERMINATION_MESSAGE_PATH'], 'w').write('{\"val_acc\": 0.99}'); sys.exit(1)",
        then="pass",
    )
    _launch(backend, trial, script, retries=1)
    observation = _finish(backend, trial)
    assert observation.status == "succeeded" and observation.termination_message == ""


# ----------------------------------------------------------------------------------------- GPUs

_REPORT_DEVICES = "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"


def _gpu_launch(backend: LocalBackend, trial: TrialRecord, gpus: int, script: str = _REPORT_DEVICES) -> None:
    template = TrialTemplate(command=["python", "-c", script], resources=Resources(gpu=gpus))
    log_dir = backend.log_dir("exp", trial.name)
    trial.handle = backend.launch(render_launch("exp", trial, template, str(log_dir), str(log_dir), None))
    trial.status = "running"


def _devices_seen(backend: LocalBackend, trial: TrialRecord) -> object:
    assert _finish(backend, trial).status == "succeeded"
    stdout = backend.trial_dir(trial.name) / f"attempt-{trial.attempt}" / "stdout.log"
    return ast.literal_eval(stdout.read_text())  # the repr the trial printed


def test_each_trial_sees_exactly_its_own_devices(tmp_path: Path) -> None:
    pool = GpuPool(GpuInventory(("0", "1", "2"), "stand-in"))
    backend = LocalBackend(tmp_path, gpus=pool)
    two, none = _trial(0), _trial(1)
    _gpu_launch(backend, two, 2, "import os, time; time.sleep(1); print(repr(os.environ['CUDA_VISIBLE_DEVICES']))")
    _gpu_launch(backend, none, 0)
    with pytest.raises(TransientLaunchError, match="waiting for 2 free GPU"):  # one left: never shared
        _gpu_launch(backend, _trial(2), 2)
    assert _devices_seen(backend, none) == ""  # asks none: sees none, even on a GPU machine
    assert _devices_seen(backend, two) == "0,1"
    assert pool.free() == ["0", "1", "2"]  # released when the trial ended
    third = _trial(2)
    _gpu_launch(backend, third, 2)
    assert _devices_seen(backend, third) == "0,1"


def test_a_killed_trial_gives_its_devices_back_and_a_retry_keeps_them(tmp_path: Path) -> None:
    pool = GpuPool(GpuInventory(("0", "1"), "stand-in"))
    backend = LocalBackend(tmp_path / "results", gpus=pool)
    sleeper = _trial(0)
    _gpu_launch(backend, sleeper, 1, "import time; time.sleep(300)")
    backend.kill(sleeper)
    assert pool.free() == ["0", "1"]
    retried = _trial(1)
    pool.claim("someone", ["0"])
    template = TrialTemplate(
        command=["python", "-c", _tensorboard_trial(tmp_path / "count", first="sys.exit(1)", then=_REPORT_DEVICES)],
        args=["{x}", "{flag}", "{log_dir}"],
        retries=1,
        resources=Resources(gpu=1),
    )
    log_dir = backend.log_dir("exp", retried.name)
    retried.handle = backend.launch(render_launch("exp", retried, template, str(log_dir), str(log_dir), None))
    assert _finish(backend, retried).status == "succeeded"
    stdout = backend.trial_dir(retried.name) / "attempt-0" / "retry-1" / "stdout.log"
    assert stdout.read_text().strip() == "'1'"


def test_after_a_crash_adopted_trials_keep_their_devices(tmp_path: Path) -> None:
    inventory = GpuInventory(("0", "1", "2", "3"), "stand-in")
    first = LocalBackend(tmp_path, gpus=GpuPool(inventory))
    running, launching = _trial(0), _trial(1)
    _gpu_launch(first, running, 2, "import time; time.sleep(3)")
    _gpu_launch(first, launching, 1, "import time; time.sleep(3)")
    assert (running.handle["gpus"], launching.handle["gpus"]) == (["0", "1"], ["2"])
    # nasctl died; the store had saved `running` with its handle, `launching` before its handle was saved.
    launching_saved = _trial(1)
    launching_saved.status = "launching"
    pool = GpuPool(inventory)
    second = LocalBackend(tmp_path, gpus=pool)
    second.reserve_recorded([running, launching_saved])
    assert pool.free() == ["3"]
    late = _trial(2)
    _gpu_launch(second, late, 1, _REPORT_DEVICES)
    assert late.handle["gpus"] == ["3"]
    with pytest.raises(TransientLaunchError):
        _gpu_launch(second, _trial(3), 1)
    template = TrialTemplate(command=["false"], resources=Resources(gpu=1))
    adopted = second.launch(render_launch("exp", launching_saved, template, "x", "x", None))
    assert adopted["pid"] == launching.handle["pid"] and adopted["gpus"] == ["2"]
    launching_saved.handle = adopted
    assert _devices_seen(second, late) == "3"
    assert _finish(second, running).status == "succeeded" and _finish(second, launching_saved).status == "succeeded"
    assert pool.free() == ["0", "1", "2", "3"]
    assert json.loads((tmp_path / "trials" / "exp-t0" / "attempt-0" / "gpus").read_text()) == ["0", "1"]
