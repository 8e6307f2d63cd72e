"""The reconcile loop over a fake engine and a fake backend: budgets, failures, restarts."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from nas_operator.core.backend import LaunchError, TransientLaunchError, TrialLaunch
from nas_operator.core.loop import Event, ExperimentLoop, reconcile_engine
from nas_operator.core.state import LoopState, spec_fingerprint
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import Candidate
from nas_operator.search.worker import InlineEngineWorker, ThreadedEngineWorker

from .conftest import toy_doc
from .fakes import FakeBackend, FakeClock, FakeEngine, MemoryStore, Script


def toy_spec(**budget: Any) -> NASExperimentSpec:
    return load_experiment(toy_doc(**budget)).spec


class Harness:
    def __init__(
        self,
        spec: NASExperimentSpec,
        backend: FakeBackend | None = None,
        engine: FakeEngine | None = None,
        state: LoopState | None = None,
        store: MemoryStore | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.engine = engine or FakeEngine()
        self.backend = backend or FakeBackend()
        self.store = store or MemoryStore()
        self.clock = clock or FakeClock()
        self.events: list[Event] = []
        self.state = state or LoopState("toy", spec_fingerprint(spec))
        self.loop = ExperimentLoop(
            spec,
            self.state,
            InlineEngineWorker(self.engine),  # type: ignore[arg-type]
            self.backend,
            self.store,
            self.engine.snapshot(),
            clock=self.clock,
            on_event=self.events.append,
        )

    def run(self, max_steps: int = 500, tick: float = 1.0) -> None:
        for _ in range(max_steps):
            if self.loop.finished:
                return
            self.loop.step()
            self.clock.advance(tick)
        raise AssertionError("loop did not finish")


def test_runs_exactly_max_trials_within_parallelism() -> None:
    h = Harness(toy_spec(maxTrials=7, parallelism=3), FakeBackend(lambda n: Script(polls=3)))
    h.run()
    assert sorted(h.backend.launches) == [f"toy-t{i}" for i in range(7)]
    assert set(h.backend.launches.values()) == {1}
    assert h.backend.max_concurrent == 3
    assert (h.state.phase, h.state.reason) == ("Succeeded", "BudgetExhausted")
    assert list(h.engine.statuses.values()) == ["COMPLETED"] * 7
    assert h.engine.completed[0] == {"f1": 0.5, "f2": 0.5}


def test_candidates_are_generated_ahead_of_free_slots() -> None:
    h = Harness(toy_spec(maxTrials=20, parallelism=2), FakeBackend(lambda n: Script(polls=5)))
    h.loop.step()
    assert h.engine.generate_calls == [4]  # 2 free slots + a lookahead of one batch
    h.loop.step()
    assert h.state.count("running") == 2 and h.state.count("queued") == 2


def test_generation_never_exceeds_the_budget() -> None:
    h = Harness(toy_spec(maxTrials=3, parallelism=2))
    h.run()
    assert sum(h.engine.generate_calls) == 3


def test_failure_rate_stops_only_after_the_minimum_number_of_failures() -> None:
    spec = toy_spec(maxTrials=10, parallelism=1, maxFailureRate=0.5, minFailedTrials=3)
    h = Harness(spec, FakeBackend(lambda n: Script(status="failed", message="exit code 2")))
    h.run()
    assert (h.state.phase, h.state.reason) == ("Failed", "FailureRateExceeded")
    assert h.state.count("failed") == 3
    assert "3 of 3 finished trials failed" in h.state.message
    assert all(t.reason == "exit code 2" for t in h.state.trials.values() if t.status == "failed")


def test_failures_below_the_minimum_do_not_stop_the_experiment() -> None:
    spec = toy_spec(maxTrials=4, parallelism=1, minFailedTrials=5)
    failing = {"toy-t1", "toy-t2"}
    h = Harness(spec, FakeBackend(lambda n: Script(status="failed" if n in failing else "succeeded")))
    h.run()
    assert (h.state.phase, h.state.reason) == ("Succeeded", "BudgetExhausted")
    assert h.state.count("succeeded") == 2 and h.state.count("failed") == 2
    assert h.engine.statuses == {0: "COMPLETED", 1: "FAILED", 2: "FAILED", 3: "COMPLETED"}


def test_time_budget_stops_and_kills_running_trials() -> None:
    spec = toy_spec(maxTrials=10, parallelism=2, maxDuration="35s")
    h = Harness(spec, FakeBackend(lambda n: Script(polls=25 if n != "toy-t0" else 2)))
    h.run(tick=10.0)
    assert (h.state.phase, h.state.reason) == ("Succeeded", "TimeBudgetExceeded")
    assert h.state.count("stopped") == 2 and h.backend.killed
    assert h.state.count("queued") == 0
    assert "ABANDONED" in h.engine.statuses.values()


def test_trial_timeout_kills_and_fails_that_trial_only() -> None:
    spec = toy_spec(maxTrials=3, parallelism=3, trialTimeout="15s")
    h = Harness(spec, FakeBackend(lambda n: Script(polls=100 if n == "toy-t1" else 2)))
    h.run(tick=5.0)
    assert h.state.trials[1].status == "failed"
    assert "timed out after 15s" in h.state.trials[1].reason
    assert h.backend.killed == ["toy-t1"]
    assert h.state.count("succeeded") == 2


def test_missing_metric_fails_the_trial_with_a_reason_and_keeps_the_others() -> None:
    h = Harness(
        toy_spec(maxTrials=3, parallelism=1),
        FakeBackend(lambda n: Script(metrics={"f1": 1.0}) if n == "toy-t1" else Script()),
    )
    h.run()
    assert h.state.trials[1].status == "failed"
    assert 'metric "f2"' in h.state.trials[1].reason
    assert h.state.trials[0].status == h.state.trials[2].status == "succeeded"
    assert h.state.phase == "Succeeded"


def test_a_vanished_trial_is_a_failed_trial() -> None:
    backend = FakeBackend(lambda n: Script(polls=3))
    h = Harness(toy_spec(maxTrials=2, parallelism=2), backend)
    h.loop.step()
    h.loop.step()
    backend.running.pop("toy-t0")
    h.run()
    assert h.state.trials[0].status == "failed"
    assert h.state.trials[0].reason.startswith("trial vanished")


def test_interrupt_then_resume_runs_each_trial_to_one_result() -> None:
    spec = toy_spec(maxTrials=6, parallelism=2)
    backend = FakeBackend(lambda n: Script(polls=3))
    h = Harness(spec, backend)
    for _ in range(4):
        h.loop.step()
    running = [t.name for t in h.state.by_status("running")]
    assert running
    h.loop.interrupt()
    assert (h.state.phase, h.state.reason) == ("Stopped", "Interrupted")
    assert h.state.count("running") == 0 and set(backend.killed) == set(running)

    state, snapshot = h.store.load()
    engine = FakeEngine.restore(snapshot)
    reconcile_engine(engine, state)  # type: ignore[arg-type]
    resumed = Harness(spec, backend, engine=engine, state=state, store=h.store)
    resumed.run()
    assert (state.phase, state.reason) == ("Succeeded", "BudgetExhausted")
    assert sorted(state.trials) == list(range(6))
    assert list(engine.statuses.values()) == ["COMPLETED"] * 6
    for name in running:  # killed once, launched again with the next attempt number
        assert backend.launches[name] == 2
        assert state.trials[int(name.split("-t")[1])].attempt == 1


def test_a_trial_marked_launching_before_a_crash_is_adopted_not_relaunched() -> None:
    spec = toy_spec(maxTrials=2, parallelism=2)
    backend = FakeBackend(lambda n: Script(polls=2))
    h = Harness(spec, backend)
    h.loop.step()
    h.loop.step()
    assert backend.launches == {"toy-t0": 1, "toy-t1": 1}
    # A crash right after the launch call, before the step saved "running": the store says launching.
    state, snapshot = h.store.load()
    for trial in state.trials.values():
        trial.status, trial.handle, trial.started_at = "launching", {}, None
    engine = FakeEngine.restore(snapshot)
    resumed = Harness(spec, backend, engine=engine, state=state, store=h.store)
    resumed.run()
    assert backend.launches == {"toy-t0": 1, "toy-t1": 1}
    assert state.count("succeeded") == 2


def test_results_recorded_while_the_engine_lagged_are_replayed_on_restore() -> None:
    spec = toy_spec(maxTrials=4, parallelism=2)
    h = Harness(spec)
    h.loop.step()
    stale_engine_snapshot = h.engine.snapshot()
    h.run()
    assert h.state.count("succeeded") == 4
    engine = FakeEngine.restore(stale_engine_snapshot)  # knows trials 0-3 as RUNNING only
    fixes = reconcile_engine(engine, h.state)  # type: ignore[arg-type]
    assert fixes == 4 and list(engine.statuses.values()) == ["COMPLETED"] * 4


def test_candidates_the_table_never_saw_are_abandoned_on_restore() -> None:
    engine = FakeEngine()
    engine.generate(3)
    state = LoopState("toy", "x")
    assert reconcile_engine(engine, state) == 3  # type: ignore[arg-type]
    assert set(engine.statuses.values()) == {"ABANDONED"}


def test_raising_max_trials_resumes_a_succeeded_experiment() -> None:
    h = Harness(toy_spec(maxTrials=3, parallelism=1))
    h.run()
    assert h.state.phase == "Succeeded"
    h.loop.update_spec(toy_spec(maxTrials=5, parallelism=1))
    h.run()
    assert (h.state.phase, h.state.reason) == ("Succeeded", "BudgetExhausted")
    assert h.state.count("succeeded") == 5
    assert any(e.reason == "Resumed" for e in h.events)


def test_suspend_lets_running_trials_finish_and_launches_nothing() -> None:
    spec = toy_spec(maxTrials=6, parallelism=2)
    h = Harness(spec, FakeBackend(lambda n: Script(polls=3)))
    h.loop.step()
    h.loop.step()
    suspended = load_experiment({**toy_doc(maxTrials=6, parallelism=2)}).spec.model_copy(update={"suspend": True})
    h.loop.update_spec(suspended)
    for _ in range(10):
        h.loop.step()
    assert (h.state.phase, h.state.reason) == ("Stopped", "Suspended")
    assert h.state.count("succeeded") == 2 and len(h.backend.launches) == 2
    h.loop.update_spec(spec)
    h.run()
    assert h.state.count("succeeded") == 6


def test_lowering_the_budget_drops_queued_candidates() -> None:
    h = Harness(toy_spec(maxTrials=10, parallelism=2), FakeBackend(lambda n: Script(polls=3)))
    h.loop.step()
    h.loop.step()
    assert h.state.count("queued") == 2
    h.loop.update_spec(toy_spec(maxTrials=3, parallelism=2))
    h.run()
    assert h.state.launched == 3 and h.state.count("succeeded") == 3
    assert list(h.engine.statuses.values()).count("ABANDONED") == 1


def test_state_is_saved_before_trials_are_launched() -> None:
    store = MemoryStore()
    store.fail_after = 0
    h = Harness(toy_spec(maxTrials=2, parallelism=2), store=store)
    with contextlib.suppress(RuntimeError):
        h.loop.step()
    assert h.backend.launches == {}  # the save failed, so nothing was started


class _BlockingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def generate(self, count: int) -> list[Candidate]:
        self.entered = getattr(self, "entered", 0) + 1
        if self.entered > 1:
            self.release.wait(timeout=30)
        return super().generate(count)


def test_a_slow_engine_never_blocks_a_step() -> None:
    spec = toy_spec(maxTrials=8, parallelism=2)
    engine = _BlockingEngine()
    worker = ThreadedEngineWorker(engine)  # type: ignore[arg-type]
    backend = FakeBackend(lambda n: Script(polls=2))
    state = LoopState("toy", spec_fingerprint(spec))
    loop = ExperimentLoop(spec, state, worker, backend, MemoryStore(), engine.snapshot(), clock=FakeClock())
    try:
        for _ in range(200):
            loop.step()
            if state.count("succeeded") >= 4:
                break
            threading.Event().wait(0.01)
        # the first 4 candidates ran while the second generation call was still blocked
        assert state.count("succeeded") == 4
        assert engine.entered == 2 and len(engine.generate_calls) == 1 and worker.generating
        engine.release.set()
        for _ in range(500):
            loop.step()
            if loop.finished:
                break
            threading.Event().wait(0.01)
        assert state.phase == "Succeeded" and state.count("succeeded") == 8
    finally:
        engine.release.set()
        worker.close()


def test_in_process_backend_feeds_results_through_the_termination_message_path() -> None:
    from nas_operator.backends.inprocess import InProcessBackend

    def evaluate(launch: TrialLaunch) -> dict[str, float]:
        x = float(launch.parameters["x"])
        if x == 0.03:
            raise RuntimeError("diverged")
        return {"f1": x, "f2": 1.0 - x}

    spec = toy_spec(maxTrials=6, parallelism=3)
    engine = FakeEngine()
    backend = InProcessBackend(evaluate)
    state = LoopState("toy", spec_fingerprint(spec))
    loop = ExperimentLoop(spec, state, InlineEngineWorker(engine), backend, MemoryStore(), engine.snapshot())  # type: ignore[arg-type]
    try:
        for _ in range(2000):
            loop.step()
            if loop.finished:
                break
            threading.Event().wait(0.005)
    finally:
        backend.shutdown()
    assert (state.phase, state.count("succeeded"), state.count("failed")) == ("Succeeded", 5, 1)
    assert state.trials[3].reason == "raised RuntimeError: diverged"
    assert engine.completed[5] == {"f1": 0.05, "f2": 0.95}
    assert sorted(backend.launches) == [f"toy-t{i}" for i in range(6)]


def test_a_failed_save_launches_nothing_and_the_healed_store_launches_each_trial_once() -> None:
    store = MemoryStore()
    h = Harness(toy_spec(maxTrials=4, parallelism=2), FakeBackend(lambda n: Script(polls=2)), store=store)
    h.loop.step()  # candidates generated and saved
    store.fail_after = store.saves  # every later save fails
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            h.loop.step()
        h.clock.advance(1)
    assert h.backend.launches == {}
    assert h.state.count("launching", "running") == 0  # what the store does not know was never started
    store.fail_after = None
    h.run()
    assert h.backend.launches == {f"toy-t{i}": 1 for i in range(4)}


class _FlakyLaunches(FakeBackend):
    """Refuses the first `transient` launches of each trial as the API server does under load (429/5xx)."""

    def __init__(self, transient: int, permanent: set[str] | None = None) -> None:
        super().__init__()
        self.transient = transient
        self.permanent = permanent or set()
        self.tries: dict[str, int] = {}

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        self.tries[launch.name] = self.tries.get(launch.name, 0) + 1
        if launch.name in self.permanent:
            raise LaunchError(f"Job {launch.name} exists and belongs to another experiment")
        if self.tries[launch.name] <= self.transient:
            raise TransientLaunchError("429 Too Many Requests")
        return super().launch(launch)


def test_a_throttled_launch_is_retried_with_backoff_and_runs_once() -> None:
    backend = _FlakyLaunches(transient=3)
    h = Harness(toy_spec(maxTrials=2, parallelism=2), backend)
    h.run(tick=1.0)
    assert h.state.count("succeeded") == 2
    assert backend.launches == {"toy-t0": 1, "toy-t1": 1}
    assert backend.tries == {"toy-t0": 4, "toy-t1": 4}  # backoff 2 s, 4 s, 8 s: a try per backoff, not per step
    assert sum(e.reason == "TrialLaunchRetry" for e in h.events) == 6


def test_a_launch_that_never_gets_through_fails_that_trial_after_the_limit() -> None:
    backend = _FlakyLaunches(transient=1000)
    h = Harness(toy_spec(maxTrials=6, parallelism=1, minFailedTrials=100), backend)
    for _ in range(400):
        h.loop.step()
        h.clock.advance(5)
        if h.state.trials.get(0) is not None and h.state.trials[0].status == "failed":
            break
    assert h.state.trials[0].status == "failed"
    assert "after 8 tries: 429 Too Many Requests" in h.state.trials[0].reason
    assert backend.tries["toy-t0"] == 8


def test_a_foreign_job_fails_that_trial_and_records_no_result() -> None:
    backend = _FlakyLaunches(transient=0, permanent={"toy-t1"})
    h = Harness(toy_spec(maxTrials=3, parallelism=1), backend)
    h.run()
    assert h.state.trials[1].status == "failed" and h.state.trials[1].metrics == {}
    assert "belongs to another experiment" in h.state.trials[1].reason
    assert h.state.trials[0].status == h.state.trials[2].status == "succeeded"


def test_a_metrics_reader_that_raises_fails_that_trial_only(monkeypatch: Any) -> None:
    import nas_operator.core.loop as loop_module

    real = loop_module.read_trial_metrics

    def reader(spec: NASExperimentSpec, log_dir: Any, message: str | None) -> dict[str, float]:
        if message and '"boom"' in message:
            raise OverflowError("int too large to convert to float")
        return real(spec, log_dir, message)

    monkeypatch.setattr(loop_module, "read_trial_metrics", reader)
    h = Harness(
        toy_spec(maxTrials=3, parallelism=1),
        FakeBackend(lambda n: Script(metrics={"f1": 0.1, "f2": 0.2, "boom": 1}) if n == "toy-t1" else Script()),
    )
    h.run()
    assert h.state.trials[1].status == "failed"
    assert h.state.trials[1].reason == "metrics: unreadable: OverflowError: int too large to convert to float"
    assert h.state.trials[0].status == h.state.trials[2].status == "succeeded"


def test_rendering_fills_bare_names_only_and_never_raises() -> None:
    from nas_operator.core.backend import render

    values = {"x": 0.25, "n": 3, "flag": True}
    assert render("--x={x} --n={n} --flag={flag} {{literal}}", values) == "--x=0.25 --n=3 --flag=true {literal}"
    hostile = "{x:>4000000000}{x!r}{x.real}{x[0]}{}{0}{unknown}{"
    assert render(hostile, values) == hostile  # left as written: validation refuses these, launching never fails


class _EngineWithoutItsModel(FakeEngine):
    """Proposes the first `working` candidates, then raises like a model whose package is missing until `fixed`."""

    def __init__(self, working: int) -> None:
        super().__init__()
        self.working = working
        self.fixed = False
        self.failed_calls = 0

    def generate(self, count: int) -> list[Candidate]:
        from nas_operator.search.engine import GenerationError

        if len(self.statuses) >= self.working and not self.fixed:
            self.failed_calls += 1
            raise GenerationError("the model needs a Python package this installation lacks: No module named 'jax'")
        return super().generate(min(count, self.working) if not self.fixed else count)


def test_an_engine_that_cannot_generate_says_so_in_the_status_and_backs_off() -> None:
    spec = toy_spec(maxTrials=6, parallelism=2)
    engine = _EngineWithoutItsModel(working=2)
    h = Harness(spec, backend=FakeBackend(lambda n: Script(polls=1)), engine=engine)
    for _ in range(120):  # two minutes of one-second steps
        h.loop.step()
        h.clock.advance(1.0)
    assert h.state.count("succeeded") == 2 and not h.loop.finished
    assert h.state.phase == "Running" and h.state.reason == "GenerationFailed"
    assert "No module named 'jax'" in h.state.message and "attempt" in h.state.message
    # backoff 5, 10, 20, 40 s...: a handful of attempts in two minutes, not one per step
    assert 3 <= engine.failed_calls <= 6, engine.failed_calls
    assert h.store.load()[0].reason == "GenerationFailed"  # the reason reaches the stored state (and the status)
    assert any(e.reason == "EngineError" and e.warning for e in h.events)
    engine.fixed = True  # the operator was upgraded: the next try succeeds and the experiment goes on by itself
    h.run(max_steps=400)
    assert h.state.phase == "Succeeded" and h.state.count("succeeded") == 6


def test_a_local_run_gives_up_on_an_engine_that_keeps_failing() -> None:
    spec = toy_spec(maxTrials=6, parallelism=2)
    engine = _EngineWithoutItsModel(working=2)
    h = Harness(spec, backend=FakeBackend(lambda n: Script(polls=1)), engine=engine)
    h.loop.max_generation_failures = 3
    h.run(max_steps=400)
    assert (h.state.phase, h.state.reason) == ("Failed", "GenerationFailed")
    assert "3 times in a row" in h.state.message and "No module named 'jax'" in h.state.message
    assert h.state.count("succeeded") == 2 and engine.failed_calls == 3
