"""One bounded, fair pool of model fits (candidate generation) for the whole operator.

Why: every experiment has its own engine thread (`search/worker.py`), and a generate call is a
GP fit plus an acquisition optimisation that keeps a CPU core busy for 10-80 s. Left alone, 50
experiments fit 50 models at once on a 2-core pod: every fit becomes 25 times slower, all of
them finish late together, and the operator's own reconcile steps starve. A pool of as many
slots as the pod has cores keeps each fit at full speed and lets the others queue.

Queueing must be fair across tenants: a namespace that runs 20 experiments must not push a
namespace with one experiment to the back of a 20-long line. So a freed slot goes round-robin:
first over namespaces that have waiters (the one served least recently, where joining the
queue counts as the back of the line), then within that namespace over its experiments (the
same rule), then FIFO for one experiment. A waiting experiment therefore waits for at most one
grant per other waiting namespace (and, inside its namespace, one per other waiting
experiment) before its namespace's turn comes round to it.

A freed slot is handed straight to the next waiter under the lock, never put back for anyone
to grab: a thread that arrives just as a slot frees cannot jump the queue. Waiters sleep on
their own `threading.Event`; nothing polls, except a caller's plain `threading.Event` abort
flag, which cannot notify anyone when set (pass an `AbortEvent` to be woken at once).

The pool is not re-entrant: a thread that asks for a slot while holding one waits for itself
when the pool is full. Generation never nests, so this is only a warning for future callers.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# How often a waiter looks at a plain `threading.Event` abort flag (an `AbortEvent` wakes it at once).
ABORT_POLL_SECONDS = 0.1


class FitSlotUnavailable(Exception):
    """A waiter gave up before it got a slot; it holds nothing and is no longer queued."""


class FitSlotTimeout(FitSlotUnavailable, TimeoutError):
    """No slot was granted within the caller's timeout."""


class FitSlotAborted(FitSlotUnavailable):
    """The caller's abort flag was set while it waited (for example: its experiment was deleted)."""


class AbortEvent(threading.Event):
    """A `threading.Event` that wakes fit-slot waiters the moment it is set.

    A plain Event cannot tell anyone it was set, so a waiter given one has to look at it every
    `ABORT_POLL_SECONDS`. This subclass runs subscribed callbacks from `set()`, so a worker that
    is closed while queued for a slot leaves the queue immediately.
    """

    def __init__(self) -> None:
        super().__init__()
        self._subscribers_lock = threading.Lock()
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._next_id = 0

    def set(self) -> None:
        super().set()
        with self._subscribers_lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the event is set; returns the function that unsubscribes it.

        A subscriber must check `is_set()` after subscribing: a `set()` that ran just before
        the subscription does not call it.
        """
        with self._subscribers_lock:
            key = self._next_id
            self._next_id += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._subscribers_lock:
                self._subscribers.pop(key, None)

        return unsubscribe


@dataclass(frozen=True)
class FitPoolStats:
    """A consistent snapshot of the pool, for gauges and counters.

    `grants_total` and `wait_seconds_total` only grow (Prometheus counters, or the sum and
    count of a summary); per-grant waits for a histogram come from `on_granted`.
    """

    slots: int
    running: int
    waiting: int
    waiting_per_namespace: dict[str, int]
    running_per_namespace: dict[str, int]
    grants_total: int
    wait_seconds_total: float
    abandoned_total: int  # waits that ended in a timeout or an abort


@dataclass(eq=False)
class _Waiter:
    namespace: str
    experiment: str
    enqueued: float
    # Set when the slot is handed over, or when an AbortEvent fires; `granted` tells them apart.
    wake: threading.Event = field(default_factory=threading.Event)
    granted: bool = False
    waited: float = 0.0


class FitPool:
    """At most `slots` fits at once; waiting callers served round-robin by namespace, then experiment.

    `on_change()` is called after every change of the queue or of the running count, and
    `on_granted(namespace, experiment, seconds_waited)` after every grant (0.0 for an
    immediate one), both outside the pool's lock so that they may call `stats()`. An exception
    in a callback is logged and swallowed: metrics must never break generation.
    """

    def __init__(
        self,
        slots: int,
        *,
        on_change: Callable[[], None] | None = None,
        on_granted: Callable[[str, str, float], None] | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a fit pool needs at least one slot, got {slots}")
        self.slots = slots
        self.on_change = on_change
        self.on_granted = on_granted
        self._lock = threading.Lock()
        # Rotation order: the first namespace is served next; within it, the first experiment.
        # A namespace or experiment is present only while it has waiters, so a deleted
        # experiment leaves nothing behind, and one that comes back joins at the back.
        self._queues: OrderedDict[str, OrderedDict[str, deque[_Waiter]]] = OrderedDict()
        self._waiting = 0
        self._running = 0
        self._running_per_namespace: dict[str, int] = {}
        self._grants_total = 0
        self._wait_seconds_total = 0.0
        self._abandoned_total = 0

    @contextmanager
    def slot(
        self,
        namespace: str,
        experiment: str,
        *,
        timeout: float | None = None,
        abort: threading.Event | None = None,
    ) -> Iterator[float]:
        """Hold one fit slot for the body of the `with`; yields the seconds waited for it.

        Blocks until granted. Raises `FitSlotTimeout` after `timeout` seconds and
        `FitSlotAborted` once `abort` is set (at once for an `AbortEvent`, within
        `ABORT_POLL_SECONDS` for a plain Event); either way the caller is out of the queue and
        holds nothing. The slot is released when the body exits, by exception too.
        """
        waited = self._acquire(namespace, experiment, timeout, abort)
        try:
            yield waited
        finally:
            self._release(namespace)

    def waiting(self, namespace: str, experiment: str) -> bool:
        """Whether that experiment has a caller queued for a slot (for its status: "waiting for a fit slot")."""
        with self._lock:
            return experiment in self._queues.get(namespace, {})

    def position(self, namespace: str, experiment: str) -> int | None:
        """How many grants come before that experiment's oldest waiter; None if it is not queued.

        An estimate: it replays the round-robin over the queue as it stands, so it is exact only
        if nobody else arrives and nobody gives up. A namespace that joins later is placed
        behind the ones already queued, but it can still come before a second turn of ours.
        It counts grants, not seconds: fits last from a second to minutes.
        """
        with self._lock:
            if experiment not in self._queues.get(namespace, {}):
                return None
            rotation: deque[tuple[str, deque[tuple[str, int]]]] = deque(
                (ns, deque((exp, len(fifo)) for exp, fifo in experiments.items()))
                for ns, experiments in self._queues.items()
            )
        grants = 0
        while rotation:
            ns, experiments = rotation.popleft()
            exp, count = experiments.popleft()
            if ns == namespace and exp == experiment:
                return grants
            grants += 1
            if count > 1:
                experiments.append((exp, count - 1))
            if experiments:
                rotation.append((ns, experiments))
        raise AssertionError("the replay always reaches a queued experiment")  # pragma: no cover

    def stats(self) -> FitPoolStats:
        """A snapshot of slots, running, waiting (total and per namespace) and the cumulative counters."""
        with self._lock:
            return FitPoolStats(
                slots=self.slots,
                running=self._running,
                waiting=self._waiting,
                waiting_per_namespace={
                    ns: sum(len(fifo) for fifo in experiments.values()) for ns, experiments in self._queues.items()
                },
                running_per_namespace=dict(self._running_per_namespace),
                grants_total=self._grants_total,
                wait_seconds_total=self._wait_seconds_total,
                abandoned_total=self._abandoned_total,
            )

    # -- internals -------------------------------------------------------------------------

    def _acquire(self, namespace: str, experiment: str, timeout: float | None, abort: threading.Event | None) -> float:
        if abort is not None and abort.is_set():
            raise FitSlotAborted(f"{namespace}/{experiment}: aborted before asking for a fit slot")
        start = time.monotonic()
        with self._lock:
            # Waiters exist only while every slot is taken (a freed slot goes straight to one),
            # so "a slot is free" already means "nobody is queued ahead".
            if self._running < self.slots and self._waiting == 0:
                self._take_locked(namespace, 0.0)
                waiter = None
            else:
                waiter = _Waiter(namespace, experiment, start)
                experiments = self._queues.setdefault(namespace, OrderedDict())
                experiments.setdefault(experiment, deque()).append(waiter)
                self._waiting += 1
        self._notify_change()
        if waiter is None:
            self._notify_granted(namespace, experiment, 0.0)
            return 0.0
        return self._wait(waiter, start, timeout, abort)

    def _wait(self, waiter: _Waiter, start: float, timeout: float | None, abort: threading.Event | None) -> float:
        unsubscribe = abort.subscribe(waiter.wake.set) if isinstance(abort, AbortEvent) else None
        try:
            deadline = None if timeout is None else start + timeout
            poll = abort is not None and not isinstance(abort, AbortEvent)
            while not waiter.wake.is_set():
                if abort is not None and abort.is_set():
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if poll:
                    remaining = ABORT_POLL_SECONDS if remaining is None else min(remaining, ABORT_POLL_SECONDS)
                waiter.wake.wait(remaining)
        finally:
            if unsubscribe is not None:
                unsubscribe()

        aborted = abort is not None and abort.is_set()
        with self._lock:
            if waiter.granted and not aborted:
                granted = True  # a grant that raced the timeout still counts: the slot is ours
            elif waiter.granted:
                # Granted while the abort was being set: pass the slot on rather than run a fit nobody wants.
                granted = False
                self._abandoned_total += 1
                self._release_locked(waiter.namespace)
            else:
                granted = False
                self._abandoned_total += 1
                self._dequeue_locked(waiter)
        if granted:
            self._notify_granted(waiter.namespace, waiter.experiment, waiter.waited)
            return waiter.waited
        self._notify_change()
        where = f"{waiter.namespace}/{waiter.experiment}"
        if aborted:
            raise FitSlotAborted(f"{where}: aborted while waiting for a fit slot")
        raise FitSlotTimeout(f"{where}: no fit slot within {timeout} s ({self.slots} slots, all busy)")

    def _release(self, namespace: str) -> None:
        with self._lock:
            self._release_locked(namespace)
        self._notify_change()

    def _release_locked(self, namespace: str) -> None:
        """Give up one slot held in `namespace`: hand it to the next waiter, or free it."""
        left = self._running_per_namespace[namespace] - 1
        if left:
            self._running_per_namespace[namespace] = left
        else:
            del self._running_per_namespace[namespace]
        self._running -= 1
        nxt = self._pop_next_locked()
        if nxt is not None:
            nxt.waited = time.monotonic() - nxt.enqueued
            nxt.granted = True
            self._take_locked(nxt.namespace, nxt.waited)
            nxt.wake.set()

    def _take_locked(self, namespace: str, waited: float) -> None:
        self._running += 1
        self._running_per_namespace[namespace] = self._running_per_namespace.get(namespace, 0) + 1
        self._grants_total += 1
        self._wait_seconds_total += waited

    def _pop_next_locked(self) -> _Waiter | None:
        """The next waiter in round-robin order; its namespace and experiment move to the back."""
        if not self._queues:
            return None
        namespace, experiments = next(iter(self._queues.items()))
        experiment, fifo = next(iter(experiments.items()))
        waiter = fifo.popleft()
        if fifo:
            experiments.move_to_end(experiment)
        else:
            del experiments[experiment]
        if experiments:
            self._queues.move_to_end(namespace)
        else:
            del self._queues[namespace]
        self._waiting -= 1
        return waiter

    def _dequeue_locked(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up out of the queue, leaving everyone else's place as it was."""
        experiments = self._queues[waiter.namespace]
        fifo = experiments[waiter.experiment]
        fifo.remove(waiter)
        if not fifo:
            del experiments[waiter.experiment]
        if not experiments:
            del self._queues[waiter.namespace]
        self._waiting -= 1

    def _notify_change(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:
            log.exception("fit pool on_change callback failed")

    def _notify_granted(self, namespace: str, experiment: str, waited: float) -> None:
        if self.on_granted is None:
            return
        try:
            self.on_granted(namespace, experiment, waited)
        except Exception:
            log.exception("fit pool on_granted callback failed")


# -- sizing ---------------------------------------------------------------------------------

_CPU_QUANTITY = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)m?$")


def default_fit_slots(env: Mapping[str, str] = os.environ, cpu_max: str | Path = CGROUP_CPU_MAX) -> int:
    """How many fits may run at once: one per CPU core the operator may use.

    A fit is CPU-bound and multi-threaded; more fits than cores only slows every one of them.
    In order: NAS_FIT_WORKERS if set and > 0 (an explicit choice, "0" or empty means automatic);
    NAS_CPU_LIMIT (the chart fills it from the container's limits.cpu through the downward
    API, "2", or "1500m" with a milli divisor) rounded up; the cgroup v2 quota in `cpu_max`
    ("200000 100000" is 2 cores; "max" is no limit) rounded up; the CPUs this process may run
    on. Never less than 1. A malformed variable raises ValueError naming it, so a typo in the
    chart stops the operator at start instead of silently running 1 or 64 fits.
    """
    raw = env.get("NAS_FIT_WORKERS", "").strip()
    if raw:
        try:
            workers = int(raw)
        except ValueError:
            raise ValueError(f"NAS_FIT_WORKERS must be a whole number (0 = automatic), got {raw!r}") from None
        if workers < 0:
            raise ValueError(f"NAS_FIT_WORKERS must be >= 0 (0 = automatic), got {raw!r}")
        if workers > 0:
            return workers
    raw = env.get("NAS_CPU_LIMIT", "").strip()
    if raw:
        cores = _parse_cpu_quantity(raw)
        if cores is None or cores <= 0:
            raise ValueError(f"NAS_CPU_LIMIT must be a positive CPU quantity such as '2' or '1500m', got {raw!r}")
        return max(1, math.ceil(cores - 1e-9))
    quota = _cgroup_cpu_quota(Path(cpu_max))
    if quota is not None:
        return max(1, math.ceil(quota - 1e-9))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _parse_cpu_quantity(raw: str) -> float | None:
    if not _CPU_QUANTITY.match(raw):
        return None
    if raw.endswith("m"):
        return float(raw[:-1]) / 1000.0
    return float(raw)


def _cgroup_cpu_quota(path: Path) -> float | None:
    """Cores allowed by a cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"); None if unlimited or unreadable.

    An unreadable or odd file is not an error: outside a container, or on cgroup v1, there is
    simply no quota to honour and the CPU count applies.
    """
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        log.warning("ignoring unparsable %s: %r", path, " ".join(fields))
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period
