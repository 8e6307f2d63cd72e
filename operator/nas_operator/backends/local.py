"""Trials as processes on this machine.

Plain subprocesses, not TorchX's local scheduler: what a trial needs here is a process
group that can be killed as a whole on timeout, its own log files, and an exit code that
survives the death of `nasctl` itself. TorchX's `local_cwd` adds an AppDef layer, polls on
its own schedule (10 s by default) and keeps exit codes only in the memory of the process
that launched the job, so a resumed run could not tell how an orphaned trial ended. Here
each trial runs under a tiny shell wrapper that writes its exit code to a file; a resumed
`nasctl` adopts a trial that is still running (by pid and start time) and reads the file
when it ends, so nothing is run twice.

Layout under the results directory:
    tensorboard/<trial>/          TensorBoard log dir ({log_dir}); `tensorboard --logdir tensorboard`
    trials/<trial>/attempt-<n>/   stdout.log, stderr.log, exit_code, pid, termination-log (retry-<k>/ for each
                                  retry), gpus (the devices the attempt was given, read back on adoption)

A trial reports the way it would on Kubernetes: with `metrics.source: terminationMessage` it gets
`NAS_TERMINATION_MESSAGE_PATH`, an empty file created before it starts, and what it wrote there is read after it exits
with the kubelet's rule (the last 4096 bytes, a regular file only), then parsed by the same function as on a cluster.
With a GPU pool, each trial gets its devices in `CUDA_VISIBLE_DEVICES` (see backends/gpus.py).

The log dir holds one run only: it is emptied before every run (a new attempt, or a retry after a non-zero exit),
after whatever the previous run left running in its process group is killed, since `reduce: max` over a directory
that still held the failed run's events would record that run's best.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nas_operator.backends.gpus import GpuPool, visible_devices
from nas_operator.core.backend import Observation, TransientLaunchError, TrialLaunch
from nas_operator.core.metrics import MAX_TERMINATION_MESSAGE_BYTES
from nas_operator.core.state import TrialRecord

# Runs the trial, then records its exit status atomically. `exec` is not used so the
# status can be written; the wrapper and the trial share one process group.
_WRAPPER = (
    'exit_file="$1"; shift; "$@"; code=$?; '
    'echo "$code" > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"; exit "$code"'
)
TAIL_LINES = 15
KILL_GRACE_SECONDS = 5.0
TERMINATION_MESSAGE_VARIABLE = "NAS_TERMINATION_MESSAGE_PATH"  # the variable backends/kubernetes.py sets
TERMINATION_LOG = "termination-log"
GPUS_FILE = "gpus"


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of a pid (field 22 of /proc/<pid>/stat), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_termination_message(path: Path) -> str | None:
    """What a finished trial left in its termination-message file, as the kubelet reads it: at most the last 4096
    bytes, of a regular file. A link or a FIFO put in its place is not followed nor opened for reading in a way that
    could block: the trial gets no message (and fails with that reason), never nasctl stuck on its read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(descriptor, max(0, info.st_size - MAX_TERMINATION_MESSAGE_BYTES), os.SEEK_SET)
        data = os.read(descriptor, MAX_TERMINATION_MESSAGE_BYTES)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return data.decode("utf-8", errors="replace")


class LocalBackend:
    """Runs each trial as a process group under `results_dir`, in `workdir`.

    `termination_messages`: give each run a termination-message file (the spec's metrics.source is
    terminationMessage). `gpus`: hand each trial its `spec.trial.resources.gpu` devices from this pool; without one
    the trials inherit nasctl's CUDA_VISIBLE_DEVICES as they always did.
    """

    def __init__(
        self,
        results_dir: Path,
        workdir: Path | None = None,
        *,
        termination_messages: bool = False,
        gpus: GpuPool | None = None,
    ) -> None:
        self.results_dir = results_dir
        self.workdir = workdir or Path.cwd()
        self.termination_messages = termination_messages
        self.gpus = gpus
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        return self.results_dir / "tensorboard" / trial_name

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        log_dir = trial.handle.get("log_dir")
        return Path(log_dir) if log_dir else None

    def trial_dir(self, trial_name: str) -> Path:
        return self.results_dir / "trials" / trial_name

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        return str(self.log_dir(experiment, trial_name)), str(self.trial_dir(trial_name))

    def reserve_recorded(self, trials: Iterable[TrialRecord]) -> None:
        """Before anything new starts: the devices of trials a crashed nasctl left running (or had started while it
        marked them launching) stay theirs. Called with the saved trial table when a run resumes.
        """
        if self.gpus is None:
            return
        for trial in trials:
            if trial.status == "running" and trial.handle.get("gpus") is not None:
                self.gpus.claim(trial.name, trial.handle["gpus"])
            elif trial.status in ("running", "launching"):
                attempt_dir = self.trial_dir(trial.name) / f"attempt-{trial.attempt}"
                recorded = _recorded_gpus(attempt_dir)
                if recorded is not None and (attempt_dir / "pid").exists():
                    self.gpus.claim(trial.name, recorded)

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        attempt_dir = self.trial_dir(launch.name) / f"attempt-{launch.attempt}"
        if (attempt_dir / "pid").exists():
            # Launched before a crash of nasctl: adopt, never start a second copy.
            return self._handle_from_dir(attempt_dir, launch)
        gpus: list[str] | None = None
        if self.gpus is not None:
            wanted = launch.template.resources.gpu
            devices = self.gpus.acquire(launch.name, wanted)
            if devices is None:  # only when adopted trials hold more than the runner planned for
                raise TransientLaunchError(
                    f"waiting for {wanted} free GPU(s): {len(self.gpus.free())} of {self.gpus.inventory.count} free"
                )
            gpus = list(devices)
        try:
            _fresh_dir(Path(launch.log_dir))  # raises OSError if it cannot be emptied: the trial must not start then
            attempt_dir.mkdir(parents=True, exist_ok=True)
            if gpus is not None:
                (attempt_dir / GPUS_FILE).write_text(json.dumps(gpus))
            return self._start(
                launch.command, launch.env, launch.log_dir, launch.template.retries, attempt_dir, retry=0, gpus=gpus
            )
        except BaseException:
            if self.gpus is not None:
                self.gpus.release(launch.name)
            raise

    def _start(
        self,
        command: list[str],
        env: dict[str, str],
        log_dir: str,
        retries: int,
        attempt_dir: Path,
        retry: int,
        gpus: list[str] | None = None,
    ) -> dict[str, Any]:
        """Start one run of a trial (the first, or a retry) and return its handle."""
        command = list(command)
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable  # the project's environment stands in for the trial image
        run_dir = attempt_dir if retry == 0 else attempt_dir / f"retry-{retry}"
        run_dir.mkdir(parents=True, exist_ok=True)
        runtime: dict[str, str] = {}
        if self.termination_messages:
            # Like the kubelet: the file exists, empty, before the trial starts; each run (retry) has its own.
            termination_log = run_dir / TERMINATION_LOG
            termination_log.unlink(missing_ok=True)
            termination_log.touch()
            runtime[TERMINATION_MESSAGE_VARIABLE] = str(termination_log)
        if gpus is not None:
            runtime["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus)
        with (run_dir / "stdout.log").open("wb") as out, (run_dir / "stderr.log").open("wb") as err:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "nas-trial", str(run_dir / "exit_code"), *command],
                cwd=self.workdir,
                env={**os.environ, **env, **runtime},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self._children[process.pid] = process
        start_time = _process_start_time(process.pid)
        (run_dir / "pid").write_text(f"{process.pid} {start_time or ''}".strip())
        (attempt_dir / "pid").write_text(str(process.pid))
        return {
            "pid": process.pid,
            "start_time": start_time,
            "run_dir": str(run_dir),
            "attempt_dir": str(attempt_dir),
            "retry": retry,
            "retries": retries,
            "command": command,
            "env": env,
            "log_dir": log_dir,
            "gpus": gpus,
        }

    def _handle_from_dir(self, attempt_dir: Path, launch: TrialLaunch) -> dict[str, Any]:
        pid = int((attempt_dir / "pid").read_text())
        retries = sorted(attempt_dir.glob("retry-*"), key=lambda p: int(p.name.split("-")[1]))
        run_dir = retries[-1] if retries else attempt_dir
        recorded = _recorded_process(run_dir)
        if recorded is not None:
            pid = recorded[0]
        gpus = _recorded_gpus(attempt_dir)
        if gpus is not None and self.gpus is not None:
            self.gpus.claim(launch.name, gpus)  # it runs with these devices: they stay its own
        return {
            "pid": pid,
            "start_time": recorded[1] if recorded is not None else None,
            "run_dir": str(run_dir),
            "attempt_dir": str(attempt_dir),
            "retry": int(run_dir.name.split("-")[1]) if retries else 0,
            "retries": launch.template.retries,
            "command": launch.command,
            "env": launch.env,
            "log_dir": launch.log_dir,
            "gpus": gpus,
        }

    def _alive(self, handle: dict[str, Any]) -> bool:
        pid = int(handle["pid"])
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None  # reaps our own zombies
        start_time = _process_start_time(pid)
        if start_time is None:
            return False
        return handle.get("start_time") in (None, start_time)

    def poll(self, trial: TrialRecord) -> Observation:
        observation = self._poll(trial)
        if self.gpus is not None:
            if observation.status == "running":
                gpus = (observation.handle or trial.handle or {}).get("gpus")
                if gpus is not None and self.gpus.held(trial.name) is None:
                    self.gpus.claim(trial.name, gpus)  # adopted without reserve_recorded: still its own
            else:
                self.gpus.release(trial.name)
        return observation

    def _poll(self, trial: TrialRecord) -> Observation:
        handle = trial.handle
        if not handle:
            return Observation("missing", message="no process was recorded for this trial")
        run_dir = Path(handle["run_dir"])
        exit_file = run_dir / "exit_code"
        if not exit_file.exists():
            if self._alive(handle):
                return Observation("running")
            if exit_file.exists():  # it ended between the two checks
                return self._poll(trial)
            self._children.pop(int(handle["pid"]), None)
            return Observation(
                "failed",
                message=f"process {handle['pid']} ended without an exit status (killed?)" + self._log_tail(run_dir),
            )
        self._children.pop(int(handle["pid"]), None)
        code = int(exit_file.read_text().strip() or "-1")
        if code == 0:
            message = read_termination_message(run_dir / TERMINATION_LOG) if self.termination_messages else None
            return Observation("succeeded", exit_code=0, log_dir=Path(handle["log_dir"]), termination_message=message)
        if int(handle.get("retry", 0)) < int(handle.get("retries", 0)):
            return self._retry(handle, code)
        return Observation("failed", exit_code=code, message=f"exit code {code}" + self._log_tail(run_dir))

    def _retry(self, handle: dict[str, Any], code: int) -> Observation:
        """Run the trial again in an empty log dir, or adopt the retry a crashed nasctl had already started."""
        retry = int(handle["retry"]) + 1
        attempt_dir = Path(handle["attempt_dir"])
        message = f"retry {retry} after exit {code}"
        started = _recorded_process(attempt_dir / f"retry-{retry}")
        if started is not None:  # started before a crash, its handle never saved: adopt, never run it twice
            pid, start_time = started
            adopted = {**handle, "pid": pid, "start_time": start_time, "retry": retry}
            adopted["run_dir"] = str(attempt_dir / f"retry-{retry}")
            return Observation("running", exit_code=code, handle=adopted, message=message)
        _kill_leftovers(int(handle["pid"]))
        try:
            _fresh_dir(Path(handle["log_dir"]))
        except OSError as exc:
            return Observation("failed", exit_code=code, message=f"exit code {code}; not retried: {exc}")
        new_handle = self._start(
            handle["command"],
            handle["env"],
            handle["log_dir"],
            int(handle["retries"]),
            attempt_dir,
            retry,
            gpus=handle.get("gpus"),  # a retry runs on the trial's own devices
        )
        return Observation("running", exit_code=code, handle=new_handle, message=message)

    def _log_tail(self, run_dir: Path) -> str:
        text = tail(run_dir / "stderr.log") or tail(run_dir / "stdout.log")
        return f"; last lines of its log:\n{text}" if text else ""

    def kill(self, trial: TrialRecord) -> None:
        """SIGTERM to the trial's whole process group, SIGKILL to whatever is left after a grace period."""
        handle = trial.handle
        if not handle:
            return
        try:
            self._kill(handle)
        finally:
            if self.gpus is not None:
                self.gpus.release(trial.name)

    def _kill(self, handle: dict[str, Any]) -> None:
        pgid = int(handle["pid"])
        if not self._alive(handle) and not group_members(pgid):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + KILL_GRACE_SECONDS
            while time.monotonic() < deadline and (self._alive(handle) or group_members(pgid)):
                time.sleep(0.05)
            if not self._alive(handle) and not group_members(pgid):
                break
        child = self._children.pop(pgid, None)
        if child is not None:
            child.wait(timeout=5)


def _recorded_process(run_dir: Path) -> tuple[int, str | None] | None:
    """The pid (and kernel start time) a run recorded when it was started, or None if it never was."""
    try:
        fields = (run_dir / "pid").read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def _recorded_gpus(attempt_dir: Path) -> list[str] | None:
    """The devices an attempt was started with, or None if it was started without a GPU pool (or never)."""
    try:
        recorded = json.loads((attempt_dir / GPUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(recorded, list) and all(isinstance(device, str) for device in recorded):
        return recorded
    return None


def _kill_leftovers(pgid: int) -> None:
    """SIGKILL what a finished run left behind in its process group (a background writer, a worker), and wait for
    it to be gone, so nothing of that run writes into the log dir the next run starts with.

    Only called right after the group's leader was seen to exit: a group with live members keeps its id, so this
    cannot hit another process group that reused the number.
    """
    if not group_members(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _fresh_dir(path: Path) -> None:
    """An empty log dir: an earlier run's curves must not mix into this one's.

    The previous run could leave anything at that path: a link (to another directory, whose contents must survive:
    it is removed, never followed), a file, a tree. shutil.rmtree itself does not follow links inside the tree.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    path.mkdir(parents=True, exist_ok=True)
