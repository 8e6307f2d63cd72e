"""The shared fit pool: bound, fairness across namespaces and experiments, no leaked slots, sizing.

Ordering is made deterministic with handshakes, not sleeps: a condition notified from the
pool's `on_change` lets the test wait until a thread is really queued before starting the next
one, and a pool of one slot serialises the grants so the order of entries is the grant order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nas_operator.search.fit_pool import (
    AbortEvent,
    FitPool,
    FitSlotAborted,
    FitSlotTimeout,
    default_fit_slots,
)

WAIT = 10.0  # upper bound for a handshake; never reached unless something is broken


class Harness:
    """A pool plus a condition that wakes the test whenever the pool's queue or running count changes."""

    def __init__(self, slots: int) -> None:
        self.changed = threading.Condition()
        self.granted: list[tuple[str, str, float]] = []
        self.pool = FitPool(slots, on_change=self._on_change, on_granted=self._on_granted)
        self.threads: list[threading.Thread] = []
        self.order: list[str] = []
        self.errors: list[BaseException] = []

    def _on_change(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _on_granted(self, namespace: str, experiment: str, waited: float) -> None:
        self.granted.append((namespace, experiment, waited))

    def until(self, predicate: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, WAIT), "handshake timed out"

    def start(self, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def hold(self, namespace: str, experiment: str) -> threading.Event:
        """A thread that takes a slot and keeps it until the returned event is set."""
        release = threading.Event()
        entered = threading.Event()

        def body() -> None:
            with self.pool.slot(namespace, experiment):
                entered.set()
                release.wait(WAIT)

        self.start(body)
        assert entered.wait(WAIT)
        return release

    def enqueue(self, namespace: str, experiment: str, label: str) -> None:
        """A thread that queues for a slot, records `label` when granted and leaves at once; returns once queued."""
        before = self.pool.stats().waiting

        def body() -> None:
            with self.pool.slot(namespace, experiment):
                self.order.append(label)

        self.start(body)
        self.until(lambda: self.pool.stats().waiting == before + 1)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        assert not self.errors, self.errors


def test_immediate_grant_when_free() -> None:
    h = Harness(2)
    with h.pool.slot("a", "x") as waited:
        assert waited == 0.0
        stats = h.pool.stats()
        assert (stats.running, stats.waiting, stats.running_per_namespace) == (1, 0, {"a": 1})
    stats = h.pool.stats()
    assert (stats.running, stats.grants_total) == (0, 1)
    assert h.granted == [("a", "x", 0.0)]


def test_bound_never_exceeded_under_many_threads() -> None:
    h = Harness(3)
    lock = threading.Lock()
    inside = 0
    peak = 0
    go = threading.Barrier(40)

    def body() -> None:
        nonlocal inside, peak
        go.wait(WAIT)
        for round_ in range(25):
            with h.pool.slot(f"ns{round_ % 4}", f"exp{threading.get_ident() % 7}"):
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                    assert inside <= 3
                time.sleep(0)  # let others run while the slot is held
                with lock:
                    inside -= 1

    for _ in range(40):
        h.start(body)
    h.join()
    stats = h.pool.stats()
    assert peak <= 3
    assert (stats.running, stats.waiting, stats.running_per_namespace) == (0, 0, {})
    assert stats.grants_total == 40 * 25


def test_small_namespace_is_not_starved_by_a_big_one() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    for i in range(20):
        h.enqueue("a", f"exp{i}", f"a{i}")
    h.enqueue("b", "only", "b")
    assert h.pool.stats().waiting_per_namespace == {"a": 20, "b": 1}
    assert h.pool.position("b", "only") == 1  # one grant of "a" first, then "b"
    assert h.pool.waiting("b", "only")
    release.set()
    h.join()
    assert "b" in h.order[:2]
    assert h.order.index("b") == 1
    assert not h.pool.waiting("b", "only")
    assert h.pool.position("b", "only") is None


def test_round_robin_across_namespaces() -> None:
    h = Harness(1)
    release = h.hold("z", "holder")
    for i in range(3):
        h.enqueue("a", "x", f"a{i}")
    for i in range(3):
        h.enqueue("b", "y", f"b{i}")
    h.enqueue("c", "w", "c0")
    release.set()
    h.join()
    assert h.order == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]


def test_round_robin_across_experiments_fifo_within_one() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    for label in ("e1-1", "e1-2", "e1-3"):
        h.enqueue("a", "e1", label)
    h.enqueue("a", "e2", "e2-1")
    h.enqueue("a", "e3", "e3-1")
    h.enqueue("a", "e2", "e2-2")
    assert h.pool.position("a", "e1") == 0
    assert h.pool.position("a", "e2") == 1
    assert h.pool.position("a", "e3") == 2
    release.set()
    h.join()
    assert h.order == ["e1-1", "e2-1", "e3-1", "e1-2", "e2-2", "e1-3"]


def test_timeout_leaves_no_leak() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    with pytest.raises(FitSlotTimeout), h.pool.slot("b", "late", timeout=0.05):
        pytest.fail("must not be granted")  # pragma: no cover
    stats = h.pool.stats()
    assert (stats.running, stats.waiting, stats.abandoned_total) == (1, 0, 1)
    assert not h.pool.waiting("b", "late")
    release.set()
    h.join()
    with h.pool.slot("b", "late", timeout=0.05) as waited:  # the slot came back
        assert waited == 0.0
    assert h.pool.stats().running == 0


def test_abort_event_wakes_the_waiter_and_leaves_no_leak() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    abort = AbortEvent()
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            with h.pool.slot("b", "deleted", abort=abort):
                pytest.fail("must not be granted")  # pragma: no cover
        except FitSlotAborted as exc:
            outcome.append(exc)

    h.enqueue("a", "next", "a-next")
    thread = h.start(waiter)
    h.until(lambda: h.pool.waiting("b", "deleted"))
    abort.set()
    thread.join(WAIT)
    assert len(outcome) == 1 and "b/deleted" in str(outcome[0])
    assert not h.pool.waiting("b", "deleted")
    assert h.pool.stats().waiting == 1
    release.set()
    h.join()
    assert h.order == ["a-next"]
    stats = h.pool.stats()
    assert (stats.running, stats.waiting, stats.abandoned_total) == (0, 0, 1)


def test_races_between_grants_timeouts_and_aborts_leak_nothing() -> None:
    """Timeouts and aborts that race hand-overs: whatever interleaving occurs, every slot comes back."""
    h = Harness(2)
    outcomes = {"granted": 0, "timeout": 0, "aborted": 0}
    lock = threading.Lock()
    aborts = [AbortEvent() for _ in range(12)]

    def body(i: int) -> None:
        for round_ in range(40):
            abort = aborts[i] if i % 3 == 0 else None
            try:
                with h.pool.slot(f"ns{i % 3}", f"e{i}", timeout=0.0005 * (round_ % 4), abort=abort):
                    kind = "granted"
                    assert h.pool.stats().running <= 2
            except FitSlotTimeout:
                kind = "timeout"
            except FitSlotAborted:
                kind = "aborted"
                aborts[i].clear()
            with lock:
                outcomes[kind] += 1

    for i in range(12):
        h.start(lambda i=i: body(i))
    for _ in range(50):
        for abort in aborts[::3]:
            abort.set()
        time.sleep(0.0005)
    h.join()
    stats = h.pool.stats()
    assert (stats.running, stats.waiting, stats.running_per_namespace, stats.waiting_per_namespace) == (0, 0, {}, {})
    assert sum(outcomes.values()) == 12 * 40
    # An abort set before the call raises without queueing, so it is not an abandoned wait.
    assert outcomes["timeout"] <= stats.abandoned_total <= outcomes["timeout"] + outcomes["aborted"]


def test_plain_event_abort_is_noticed() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    abort = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        with pytest.raises(FitSlotAborted), h.pool.slot("b", "x", abort=abort):
            pytest.fail("must not be granted")  # pragma: no cover
        done.set()

    h.start(waiter)
    h.until(lambda: h.pool.waiting("b", "x"))
    abort.set()
    assert done.wait(WAIT)
    release.set()
    h.join()
    assert h.pool.stats().running == 0


def test_already_aborted_never_queues() -> None:
    h = Harness(1)
    abort = threading.Event()
    abort.set()
    with pytest.raises(FitSlotAborted), h.pool.slot("a", "x", abort=abort):
        pytest.fail("must not be granted")  # pragma: no cover
    stats = h.pool.stats()
    assert (stats.running, stats.waiting, stats.grants_total) == (0, 0, 0)


def test_exception_inside_the_slot_releases_it() -> None:
    h = Harness(1)
    with pytest.raises(RuntimeError, match="fit blew up"), h.pool.slot("a", "x"):
        raise RuntimeError("fit blew up")
    assert h.pool.stats().running == 0
    release = h.hold("a", "y")
    h.enqueue("b", "z", "b")

    def failing() -> None:
        with h.pool.slot("c", "w"):
            raise ValueError("second failure")

    h.start(failing)
    h.until(lambda: h.pool.stats().waiting == 2)
    release.set()
    for thread in h.threads:
        thread.join(WAIT)
    assert [type(e) for e in h.errors] == [ValueError]
    assert h.order == ["b"]
    assert h.pool.stats().running == 0


def test_stats_and_callbacks_count_waits() -> None:
    h = Harness(1)
    release = h.hold("a", "holder")
    h.enqueue("b", "x", "b")
    h.enqueue("b", "y", "b2")
    assert h.pool.stats().waiting_per_namespace == {"b": 2}
    release.set()
    h.join()
    stats = h.pool.stats()
    assert stats.grants_total == 3 == len(h.granted)
    assert [(ns, exp) for ns, exp, _ in h.granted] == [("a", "holder"), ("b", "x"), ("b", "y")]
    assert all(waited >= 0.0 for *_, waited in h.granted)
    assert stats.wait_seconds_total == pytest.approx(sum(waited for *_, waited in h.granted))
    assert stats.waiting_per_namespace == {} and stats.running == 0


def test_a_failing_callback_does_not_break_the_pool() -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("metrics down")

    pool = FitPool(1, on_change=boom, on_granted=boom)
    with pool.slot("a", "x"):
        assert pool.stats().running == 1
    assert pool.stats().running == 0


def test_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        FitPool(0)


# -- default_fit_slots ------------------------------------------------------------------


def _cpu_max(tmp_path: Path, text: str | None) -> Path:
    path = tmp_path / "cpu.max"
    if text is not None:
        path.write_text(text)
    return path


def test_fit_workers_wins(tmp_path: Path) -> None:
    path = _cpu_max(tmp_path, "100000 100000\n")
    assert default_fit_slots({"NAS_FIT_WORKERS": "5", "NAS_CPU_LIMIT": "2"}, path) == 5


def test_fit_workers_zero_or_empty_means_automatic(tmp_path: Path) -> None:
    path = _cpu_max(tmp_path, None)
    assert default_fit_slots({"NAS_FIT_WORKERS": "0", "NAS_CPU_LIMIT": "3"}, path) == 3
    assert default_fit_slots({"NAS_FIT_WORKERS": " ", "NAS_CPU_LIMIT": "3"}, path) == 3


@pytest.mark.parametrize(("limit", "slots"), [("2", 2), ("1.5", 2), ("1500m", 2), ("250m", 1), ("4000m", 4)])
def test_cpu_limit_rounds_up(tmp_path: Path, limit: str, slots: int) -> None:
    assert default_fit_slots({"NAS_CPU_LIMIT": limit}, _cpu_max(tmp_path, "800000 100000")) == slots


@pytest.mark.parametrize(("text", "slots"), [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1)])
def test_cgroup_quota(tmp_path: Path, text: str, slots: int) -> None:
    assert default_fit_slots({}, _cpu_max(tmp_path, text)) == slots


@pytest.mark.parametrize("text", ["max 100000\n", None, "garbage", "x 100000"])
def test_no_quota_falls_back_to_affinity(tmp_path: Path, text: str | None) -> None:
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_fit_slots({}, _cpu_max(tmp_path, text)) == max(1, expected or 1)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"NAS_FIT_WORKERS": "two"}, "NAS_FIT_WORKERS"),
        ({"NAS_FIT_WORKERS": "-1"}, "NAS_FIT_WORKERS"),
        ({"NAS_FIT_WORKERS": "1.5"}, "NAS_FIT_WORKERS"),
        ({"NAS_CPU_LIMIT": "two"}, "NAS_CPU_LIMIT"),
        ({"NAS_CPU_LIMIT": "0"}, "NAS_CPU_LIMIT"),
        ({"NAS_CPU_LIMIT": "-2"}, "NAS_CPU_LIMIT"),
        ({"NAS_CPU_LIMIT": "2Gi"}, "NAS_CPU_LIMIT"),
    ],
)
def test_invalid_values_name_the_variable(tmp_path: Path, env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        default_fit_slots(env, _cpu_max(tmp_path, None))
