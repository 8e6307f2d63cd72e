"""Trials as real local processes: exit codes, log tails, timeouts, adoption after a crash, retries."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from nas_operator.backends.local import LocalBackend, group_members
from nas_operator.core.backend import render_launch
from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import TrialTemplate


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
