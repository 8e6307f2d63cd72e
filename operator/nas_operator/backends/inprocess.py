"""Trials as Python callables on threads of this process.

For objective functions that are cheap to evaluate in Python (benchmark problems, tests):
the same loop, persistence and budget rules as real trials, without a process per trial.
The callable's return value (a {metric: value} mapping) becomes the trial's termination
message, so it is read by the same code path as a Kubernetes pod's.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nas_operator.core.backend import Observation, TrialLaunch
from nas_operator.core.state import TrialRecord

TrialFunction = Callable[[TrialLaunch], Mapping[str, float]]


class InProcessBackend:
    def __init__(self, function: TrialFunction, max_workers: int = 8, log_root: Path | None = None) -> None:
        self.function = function
        self.log_root = log_root or Path("/nonexistent")
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nas-trial")
        self._futures: dict[str, Future[Mapping[str, float]]] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.launches: list[str] = []

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        return self.log_root / trial_name

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        path = str(self.log_dir(experiment, trial_name))
        return path, path

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        return self.log_dir(experiment, trial.name)

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        key = f"{launch.name}#{launch.attempt}"
        with self._lock:
            if key not in self._futures:
                self._futures[key] = self._pool.submit(self.function, launch)
                self.launches.append(launch.name)
        return {"key": key}

    def poll(self, trial: TrialRecord) -> Observation:
        key = trial.handle.get("key")
        future = self._futures.get(key) if key else None
        if future is None:
            return Observation("missing", message="this process holds no such trial")
        if key in self._cancelled:
            return Observation("failed", message="killed")
        if not future.done():
            return Observation("running")
        error = future.exception()
        if error is not None:
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            return Observation("failed", exit_code=1, message=f"raised {text}")
        return Observation("succeeded", exit_code=0, termination_message=json.dumps(dict(future.result())))

    def kill(self, trial: TrialRecord) -> None:
        key = trial.handle.get("key")
        if key and key in self._futures:
            self._futures[key].cancel()  # a running call cannot be stopped; its result is ignored
            self._cancelled.add(key)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
