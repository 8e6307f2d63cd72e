"""Crash points for fault-injection tests: the process SIGKILLs itself at a named moment.

A SIGKILL from outside lands at a random moment, rarely inside the few milliseconds that matter (between a write that
landed and the response that records it). The chaos test arms named points through the environment, so each of those
moments is hit for certain:

    NAS_FAULT_INJECT="save:candidates:after=1,create:after=2"

kills the process right after the first save of new candidates returned, or right after the second trial create
returned (whichever comes first). Unset (always, outside tests) every call is one dictionary lookup.

Slow points stretch a named moment instead, so that a test can build the contention it checks (a queue for the
fit pool is seconds long only with many experiments and a slow model; the fairness test needs it every time):

    NAS_FAULT_SLOW="generate=1.5"

makes every candidate generation take 1.5 s longer, inside its fit slot.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

ENV = "NAS_FAULT_INJECT"
SLOW_ENV = "NAS_FAULT_SLOW"


def _armed(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.rpartition("=")
        points[name] = int(count)
    return points


_ARMED = _armed(os.environ.get(ENV, ""))
_SLOW = {
    name: float(seconds)
    for name, _, seconds in (
        item.strip().rpartition("=") for item in os.environ.get(SLOW_ENV, "").split(",") if item.strip()
    )
}
_HITS: dict[str, int] = {}
_LOCK = threading.Lock()


def crash_point(name: str) -> None:
    """Die here by SIGKILL if the environment armed this point and its count is reached."""
    if not _ARMED or name not in _ARMED:
        return
    with _LOCK:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] < _ARMED[name]:
            return
    print(f"nas-operator: fault injection: SIGKILL at {name}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def slow_point(name: str) -> None:
    """Sleep here for the seconds the environment gave this point (see SLOW_ENV)."""
    if _SLOW and name in _SLOW:
        time.sleep(_SLOW[name])
