"""The engine behind a queue: results applied and candidates generated in order, ahead of need.

Candidate generation costs 10-80 s per batch on two cores once there are a few dozen
observations. A loop that generates only when a slot frees leaves that slot idle for that
long. So the engine lives on its own thread: the loop posts results and requests for
candidates and never waits; finished batches (and a fresh state snapshot taken right after
them) are picked up at the loop's next step. Running trials are pending in Ax, so candidates
generated ahead already account for them.

`InlineEngineWorker` does the same work synchronously, for tests and for callers that want
deterministic step-by-step behaviour.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nas_operator.search.engine import Candidate, Engine

log = logging.getLogger(__name__)


@dataclass
class WorkerOutput:
    """What the engine produced since the last poll."""

    candidates: list[Candidate] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    generation_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Generation calls that raised, apart from `errors`: the loop backs off and says so in the status (a model that
    # cannot propose anything leaves the experiment waiting, which the user must be able to see and fix).
    generation_errors: list[str] = field(default_factory=list)


@dataclass
class _Op:
    kind: str  # complete | fail | abandon | early_stop | generate
    index: int = -1
    metrics: Mapping[str, float] | None = None
    reason: str = ""
    count: int = 0


class InlineEngineWorker:
    """Applies every operation immediately, in the caller's thread."""

    def __init__(self, engine: Engine, on_generation: Callable[[float, int], None] | None = None) -> None:
        self.engine = engine
        self._output = WorkerOutput()
        self._dirty = True
        self._on_generation = on_generation
        self._in_flight = 0

    @property
    def generating(self) -> int:
        """Candidates requested and not yet delivered."""
        return self._in_flight

    def complete(self, index: int, metrics: Mapping[str, float]) -> None:
        self._apply(_Op("complete", index, metrics=metrics))

    def fail(self, index: int, reason: str) -> None:
        self._apply(_Op("fail", index, reason=reason))

    def abandon(self, index: int) -> None:
        self._apply(_Op("abandon", index))

    def early_stop(self, index: int, projected: Mapping[str, float]) -> None:
        self._apply(_Op("early_stop", index, metrics=projected))

    def request(self, count: int) -> None:
        self._apply(_Op("generate", count=count))

    def poll(self) -> WorkerOutput:
        output, self._output = self._output, WorkerOutput()
        if self._dirty:
            output.snapshot = self.engine.snapshot()
            self._dirty = False
        return output

    def close(self) -> None:
        pass

    def _apply(self, op: _Op) -> None:
        try:
            _run_op(self.engine, op, self._output, self._on_generation)
        except Exception as exc:
            _record_failure(self._output, op, exc)
        self._dirty = True


def _record_failure(output: WorkerOutput, op: _Op, exc: Exception) -> None:
    message = f"{op.kind} failed: {exc}"
    output.errors.append(message)
    if op.kind == "generate":
        output.generation_errors.append(str(exc))
    log.error("engine %s failed:\n%s", op.kind, traceback.format_exc())


def _run_op(
    engine: Engine,
    op: _Op,
    output: WorkerOutput,
    on_generation: Callable[[float, int], None] | None,
) -> None:
    if op.kind == "complete":
        assert op.metrics is not None
        engine.complete(op.index, op.metrics)
    elif op.kind == "fail":
        engine.fail(op.index, op.reason)
    elif op.kind == "abandon":
        engine.abandon(op.index)
    elif op.kind == "early_stop":
        assert op.metrics is not None
        engine.early_stop(op.index, op.metrics)
    elif op.kind == "generate":
        start = time.perf_counter()
        candidates = engine.generate(op.count)
        seconds = time.perf_counter() - start
        output.candidates.extend(candidates)
        output.generation_seconds.append(seconds)
        if on_generation is not None:
            on_generation(seconds, len(candidates))
    else:  # pragma: no cover - programming error
        raise ValueError(op.kind)


class ThreadedEngineWorker:
    """Runs the engine on a daemon thread; the caller only posts and polls."""

    def __init__(self, engine: Engine, on_generation: Callable[[float, int], None] | None = None) -> None:
        self.engine = engine
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._lock = threading.Lock()
        self._output = WorkerOutput()
        self._requested = 0
        self._on_generation = on_generation
        self._thread = threading.Thread(target=self._run, name="nas-engine", daemon=True)
        self._thread.start()

    @property
    def generating(self) -> int:
        with self._lock:
            return self._requested

    def complete(self, index: int, metrics: Mapping[str, float]) -> None:
        self._queue.put(_Op("complete", index, metrics=dict(metrics)))

    def fail(self, index: int, reason: str) -> None:
        self._queue.put(_Op("fail", index, reason=reason))

    def abandon(self, index: int) -> None:
        self._queue.put(_Op("abandon", index))

    def early_stop(self, index: int, projected: Mapping[str, float]) -> None:
        self._queue.put(_Op("early_stop", index, metrics=dict(projected)))

    def request(self, count: int) -> None:
        with self._lock:
            self._requested += count
        self._queue.put(_Op("generate", count=count))

    def poll(self) -> WorkerOutput:
        with self._lock:
            output, self._output = self._output, WorkerOutput()
        return output

    def close(self) -> None:
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            local = WorkerOutput()
            ops = [op]
            # Apply every result already waiting before generating: the batch sees the newest data.
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                ops.append(nxt)
            ops.sort(key=lambda o: o.kind == "generate")
            for item in ops:
                try:
                    _run_op(self.engine, item, local, self._on_generation)
                except Exception as exc:
                    _record_failure(local, item, exc)
            try:
                local.snapshot = self.engine.snapshot()
            except Exception as exc:  # keep the previous snapshot; the loop reports the error
                local.errors.append(f"snapshot failed: {exc}")
            with self._lock:
                for item in ops:
                    if item.kind == "generate":
                        self._requested -= item.count
                self._output.candidates.extend(local.candidates)
                self._output.generation_seconds.extend(local.generation_seconds)
                self._output.errors.extend(local.errors)
                self._output.generation_errors.extend(local.generation_errors)
                if local.snapshot is not None:
                    self._output.snapshot = local.snapshot


EngineWorker = InlineEngineWorker | ThreadedEngineWorker
