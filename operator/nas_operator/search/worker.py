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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from nas_operator.core.faults import slow_point
from nas_operator.search.engine import Candidate, Engine
from nas_operator.search.fit_pool import AbortEvent, FitSlotAborted

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
    # Generation calls that proposed nothing (the model needs data the running trials have not given yet).
    empty_generations: int = 0


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
        output.empty_generations += not candidates
        output.generation_seconds.append(seconds)
        if on_generation is not None:
            on_generation(seconds, len(candidates))
    else:  # pragma: no cover - programming error
        raise ValueError(op.kind)


class EngineUnavailable(RuntimeError):
    """The engine could not be built (a stored snapshot Ax cannot decode): the caller drops this worker and rebuilds."""


class ThreadedEngineWorker:
    """Runs the engine on a daemon thread; the caller only posts and polls.

    `engine` may be a function that builds it: a restored experiment then decodes Ax's state on this thread, at its
    first operation, not when the operator picks the experiment up, so a restart costs only the trial tables of the
    experiments whose trials are all still running, and restores can be bounded (`restore_slot`). Operations posted
    before that are applied after it, in order, exactly as on a built engine.

    `fit_slot` is the operator's fit pool: every generation call waits for a slot, so fifty experiments wanting
    candidates at once make a queue, not fifty model fits on two cores. `on_wake` tells the owner that output is
    ready or that the wait for a slot began or ended (its status says "waiting for the model").
    """

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        on_generation: Callable[[float, int], None] | None = None,
        *,
        fit_slot: Callable[[threading.Event], AbstractContextManager[object]] | None = None,
        restore_slot: Callable[[], AbstractContextManager[object]] | None = None,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        built = hasattr(engine, "generate")  # an engine (or a test's stand-in), not a function that builds one
        self._engine: Engine | None = engine if built else None  # type: ignore[assignment]
        self._factory: Callable[[], Engine] | None = None if built else engine  # type: ignore[assignment]
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._lock = threading.Lock()
        self._output = WorkerOutput()
        self._requested = 0
        self._waiting_for_slot = False
        self._broken = ""
        self._on_generation = on_generation
        self._fit_slot = fit_slot
        self._restore_slot = restore_slot
        self._on_wake = on_wake or (lambda: None)
        self._closed = AbortEvent()  # a closed worker leaves the fit queue instead of fitting for nobody
        self._thread = threading.Thread(target=self._run, name="nas-engine", daemon=True)
        self._thread.start()

    @property
    def generating(self) -> int:
        with self._lock:
            return self._requested

    @property
    def waiting_for_slot(self) -> bool:
        """Candidates are wanted and the fit pool has not granted a slot yet."""
        with self._lock:
            return self._waiting_for_slot

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
            if self._broken:
                raise EngineUnavailable(self._broken)
            output, self._output = self._output, WorkerOutput()
        return output

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _built(self) -> Engine:
        if self._engine is None:
            assert self._factory is not None
            with self._restore_slot() if self._restore_slot is not None else nullcontext():
                self._engine = self._factory()
            self._factory = None
        return self._engine

    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
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
            try:
                engine = self._built()
            except Exception as exc:  # nothing is applied: the owner rebuilds from the store, which has it all
                log.error("engine could not be built:\n%s", traceback.format_exc())
                with self._lock:
                    self._broken = f"the engine could not be restored: {type(exc).__name__}: {exc}"
                self._on_wake()
                return
            local = WorkerOutput()
            for item in ops:
                try:
                    if item.kind == "generate" and self._fit_slot is not None:
                        self._generate_in_slot(engine, item, local)
                    else:
                        _run_op(engine, item, local, self._on_generation)
                except FitSlotAborted:
                    pass  # closed while queued: its owner is gone, and so is the request
                except Exception as exc:
                    _record_failure(local, item, exc)
            try:
                local.snapshot = engine.snapshot()
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
                self._output.empty_generations += local.empty_generations
                if local.snapshot is not None:
                    self._output.snapshot = local.snapshot
            if local.candidates or local.errors or local.empty_generations:
                self._on_wake()  # the loop acts on each: launches, backs off, or waits for the next result

    def _generate_in_slot(self, engine: Engine, op: _Op, output: WorkerOutput) -> None:
        assert self._fit_slot is not None
        with self._lock:
            self._waiting_for_slot = True
        self._on_wake()
        try:
            with self._fit_slot(self._closed):
                with self._lock:
                    self._waiting_for_slot = False
                self._on_wake()
                slow_point("generate")
                _run_op(engine, op, output, self._on_generation)
        finally:
            with self._lock:
                self._waiting_for_slot = False


EngineWorker = InlineEngineWorker | ThreadedEngineWorker
