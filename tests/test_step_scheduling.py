"""What decides when an experiment is stepped, without a cluster: due times, a model that needs data, the engine worker.

The operator steps an experiment on events and on `next_due`; these tests pin down the parts that no event
announces, and the worker's lazy restore, fit slot and wake-ups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nas_operator.core.loop import ExperimentLoop
from nas_operator.core.state import LoopState, spec_fingerprint
from nas_operator.search.engine import Candidate
from nas_operator.search.fit_pool import FitPool
from nas_operator.search.worker import EngineUnavailable, InlineEngineWorker, ThreadedEngineWorker, WorkerOutput

from .fakes import FakeBackend, FakeClock, FakeEngine, MemoryStore, Script
from .test_loop import toy_spec


def _loop(spec: Any, engine: FakeEngine, backend: FakeBackend, clock: FakeClock) -> ExperimentLoop:
    return ExperimentLoop(
        spec,
        LoopState("toy", spec_fingerprint(spec)),
        InlineEngineWorker(engine),  # type: ignore[arg-type]
        backend,
        MemoryStore(),
        engine.snapshot(),
        clock=clock,
    )


def test_nothing_is_due_while_trials_run_without_limits_and_a_finished_loop_has_no_due_time() -> None:
    spec = toy_spec(maxTrials=2, parallelism=2)
    spec = spec.model_copy(
        update={"budget": spec.budget.model_copy(update={"max_duration": None, "trial_timeout": None})}
    )
    clock = FakeClock()
    loop = _loop(spec, FakeEngine(), FakeBackend(lambda name: Script(polls=3)), clock)
    loop.step()
    loop.step()
    assert loop.state.count("running") == 2
    assert loop.next_due(clock(), 2.0) is None  # only an event (a Job change) can move it on
    for _ in range(5):
        clock.advance(1)
        loop.step()
    assert loop.finished
    assert loop.next_due(clock(), 2.0) is None


def test_the_trial_timeout_and_the_time_budget_are_due_times() -> None:
    spec = toy_spec(maxTrials=2, parallelism=1, trialTimeout="30s", maxDuration="1h")
    clock = FakeClock()
    loop = _loop(spec, FakeEngine(), FakeBackend(lambda name: Script(polls=10**6)), clock)
    loop.step()
    loop.step()  # the first step asks for candidates, the second launches them
    due = loop.next_due(clock(), 2.0)
    assert due is not None and 30 <= due <= 31
    clock.advance(due)
    loop.step()
    assert loop.state.count("failed") == 1  # the timeout fired at its due time, with no event


def test_early_stopping_polls_curves_while_trials_run() -> None:
    doc_spec = toy_spec(maxTrials=2, parallelism=1)
    spec = doc_spec.model_copy(update={"early_stopping": _rule()})
    clock = FakeClock()
    loop = _loop(spec, FakeEngine(), FakeBackend(lambda name: Script(polls=10**6)), clock)
    loop.step()
    loop.step()
    assert loop.state.count("running") == 1
    assert loop.next_due(clock(), 2.0) == 2.0


def _rule() -> Any:
    from nas_operator.resource.spec import EarlyStopping

    return EarlyStopping.model_validate({"minProgression": 1})


class _StarvedEngine(FakeEngine):
    """Proposes nothing until a result is in, as Ax's model node does without data."""

    def generate(self, count: int) -> list[Candidate]:
        self.generate_calls.append(count)
        if not self.completed and self.statuses:
            return []
        return super().generate(1)


def test_a_generation_that_proposed_nothing_is_asked_again_only_after_a_new_result() -> None:
    spec = toy_spec(maxTrials=3, parallelism=1)
    engine = _StarvedEngine()
    clock = FakeClock()
    loop = _loop(spec, engine, FakeBackend(lambda name: Script(polls=5)), clock)
    for _ in range(2):
        loop.step()
        clock.advance(1)
    asked = len(engine.generate_calls)
    assert engine.generate_calls[-1] == 1 and loop.state.count("running") == 1
    for _ in range(2):  # the trial still runs: the engine proposed nothing, and is not asked again
        loop.step()
        clock.advance(1)
    assert len(engine.generate_calls) == asked
    for _ in range(10):
        loop.step()
        clock.advance(1)
    assert len(engine.generate_calls) >= 3  # the first result came in: asked again, and this time it proposes
    assert loop.state.count("succeeded") >= 1 and len(loop.state.trials) >= 2


def test_a_restored_engine_is_built_on_the_worker_thread_at_its_first_operation() -> None:
    built: list[str] = []
    engine = FakeEngine()

    def build() -> FakeEngine:
        built.append(threading.current_thread().name)
        return engine

    woken = threading.Event()
    worker = ThreadedEngineWorker(build, on_wake=woken.set)  # type: ignore[arg-type]
    try:
        time.sleep(0.1)
        assert built == []  # nothing needed it yet: a restart decodes nothing for this experiment
        worker.request(2)
        assert woken.wait(5)
        deadline = time.monotonic() + 5
        output = worker.poll()
        while not output.candidates and time.monotonic() < deadline:
            time.sleep(0.01)
            output = worker.poll()
        assert [c.index for c in output.candidates] == [0, 1]
        assert built == ["nas-engine"]
    finally:
        worker.close()


def test_an_engine_that_cannot_be_restored_makes_the_worker_unavailable() -> None:
    def broken() -> FakeEngine:
        raise ValueError("snapshot from the future")

    woken = threading.Event()
    worker = ThreadedEngineWorker(broken, on_wake=woken.set)  # type: ignore[arg-type]
    worker.complete(0, {"f1": 1.0, "f2": 1.0})
    assert woken.wait(5)
    try:
        worker.poll()
    except EngineUnavailable as exc:
        assert "snapshot from the future" in str(exc)
    else:
        raise AssertionError("poll() should raise")


def test_generation_waits_for_a_fit_slot_and_a_closed_worker_leaves_the_queue() -> None:
    pool = FitPool(1)
    changes: list[bool] = []
    engine = FakeEngine()
    worker: ThreadedEngineWorker | None = None

    def on_wake() -> None:
        if worker is not None:
            changes.append(worker.waiting_for_slot)

    @contextmanager
    def slot(closed: threading.Event) -> Iterator[float]:
        with pool.slot("team-a", "toy", abort=closed) as waited:
            yield waited

    with pool.slot("team-b", "other"):  # the only slot is taken
        worker = ThreadedEngineWorker(engine, fit_slot=slot, on_wake=on_wake)  # type: ignore[arg-type]
        worker.request(1)
        deadline = time.monotonic() + 5
        while not worker.waiting_for_slot:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert pool.waiting("team-a", "toy")
        worker.close()  # its owner dropped it: it must not fit for nobody once the slot frees
        deadline = time.monotonic() + 5
        while pool.waiting("team-a", "toy"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    worker.join(5)
    assert engine.generate_calls == []
    assert True in changes  # the owner was told it waits (its status says WaitingForModel)


class _ManualWorker:
    """Like ThreadedEngineWorker: a request stays in flight until `deliver` is called."""

    def __init__(self) -> None:
        self.requested = 0
        self.requests: list[int] = []
        self.out = WorkerOutput()
        self.next_index = 0

    @property
    def generating(self) -> int:
        return self.requested

    def complete(self, i: int, m: Any) -> None:
        pass

    def fail(self, i: int, r: str) -> None:
        pass

    def abandon(self, i: int) -> None:
        pass

    def early_stop(self, i: int, p: Any) -> None:
        pass

    def request(self, n: int) -> None:
        self.requested += n
        self.requests.append(n)

    def deliver(self, n_candidates: int) -> None:
        self.requested = 0
        for _ in range(n_candidates):
            self.out.candidates.append(Candidate(self.next_index, {"x": 0.1, "y": 0.5}, "Fake"))
            self.next_index += 1
        if not n_candidates:
            self.out.empty_generations += 1

    def poll(self) -> WorkerOutput:
        o, self.out = self.out, WorkerOutput()
        return o

    def close(self) -> None:
        pass


def test_results_concluded_while_an_empty_generation_was_in_flight_are_not_lost() -> None:
    """The request was posted before those results: its empty answer must not make the loop wait for more."""
    spec = toy_spec(maxTrials=10, parallelism=2)
    clock = FakeClock()
    polls: dict[str, bool] = {}
    backend = FakeBackend(lambda name: Script(polls=10**9 if not polls.get("done") else 1))
    worker = _ManualWorker()
    state = LoopState("toy", spec_fingerprint(spec))
    loop = ExperimentLoop(spec, state, worker, backend, MemoryStore(), {}, clock=clock)  # type: ignore[arg-type]
    loop.step()  # requests 4
    worker.deliver(2)  # e.g. Sobol gives 2 ...
    loop.step()
    clock.advance(1)  # absorbs 2, launches 2 (running), requests more
    assert worker.generating  # a request is in flight (waiting for a fit slot)
    polls["done"] = True  # both running trials finish now
    loop.step()
    clock.advance(1)  # concludes both while the generation is still in flight
    worker.deliver(0)  # Ax: DataRequired (it had not been told of the results yet) -> empty
    for _ in range(5):
        loop.step()
        clock.advance(100)
    assert worker.generating, "never asks again: stalled"
