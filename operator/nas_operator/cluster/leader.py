"""Leader election on a coordination.k8s.io/v1 Lease: one operator replica reconciles, the others stand by.

The semantics are client-go's `leaderelection` package, so the Lease reads the same in `kubectl get lease` as
any controller-manager's: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`,
`leaseTransitions`. A candidate takes the Lease when it is absent, already ours, released (empty holder), or
when its record has not changed for `leaseDurationSeconds` by OUR clock since we first saw that record.

Why our own observation time and not the remote `renewTime`: the holder writes `renewTime` from its clock, and
two nodes' clocks can disagree by more than a lease. Timing the record's last change with the local monotonic
clock needs only that both clocks run at about the same rate, which they do; it costs a standby at most one
extra lease duration after its own start before it may take over.

Why every write carries the Lease's resourceVersion (a replace, never a patch): two standbys that both see the
Lease expire both try to take it, and the API server accepts exactly one of the two writes (the other gets 409
Conflict, or AlreadyExists on a fresh Lease). That is what makes "two leaders at once" impossible rather than
unlikely.

Why a leader that cannot renew stops (`on_lost`, which the operator turns into an exit): a standby may take the
Lease `leaseDurationSeconds` after the last renewal it saw; the leader gives up after `renew_deadline_seconds`
(shorter) without a successful renewal, counted from just before the renewal it sent, so it has stopped before
anyone else can have started. A deposed leader that kept stepping experiments would race the new one. Whatever
a step already had in flight when the leader stopped is fenced by the state store: every state write is
conditional on the ConfigMap's resourceVersion (or the SQL row's version), so a stale write fails instead of
overwriting the new leader's state.

The kubernetes client is synchronous, so this module is too: one lock serialises attempts, and the renewals run
on a daemon thread. Nothing here imports Kopf.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Where a pod finds its own namespace when nothing else says it.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Standbys wait retry_seconds times up to (1 + JITTER) between attempts, so that several of them started together
# (a rollout) do not hit the API server in lockstep. client-go's JitterFactor is 1.2 as well.
JITTER = 0.2
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(name: str, env: Mapping[str, str], default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


def _number(name: str, env: Mapping[str, str], default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number of seconds") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive number of seconds")
    return number


def _default_identity() -> str:
    """The host name (a pod's name) plus a random suffix: two processes on one machine must not share one."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, kw_only=True)
class LeaseConfig:
    """Which Lease, who we are, and the three durations of client-go's elector.

    `lease_seconds` is whole seconds because the Lease's `leaseDurationSeconds` is an int32. It must exceed
    `renew_deadline_seconds` (a leader stops before a standby may start), which must exceed `retry_seconds` (a
    leader gets several tries per deadline).
    """

    name: str = "nas-operator"
    namespace: str
    identity: str
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    # Bound of one API call; None: the renew deadline (a leader's calls are also cut at its deadline).
    request_timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.namespace:
            raise ValueError("the Lease needs a name and a namespace")
        if not self.identity:
            raise ValueError("an empty identity would read as a released Lease")
        if isinstance(self.lease_seconds, bool) or not isinstance(self.lease_seconds, int) or self.lease_seconds < 1:
            raise ValueError(f"lease_seconds={self.lease_seconds!r}: expected whole seconds, at least 1")
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "expected 0 < retry_seconds < renew_deadline_seconds < lease_seconds, got "
                f"{self.retry_seconds} / {self.renew_deadline_seconds} / {self.lease_seconds}"
            )
        if self.request_timeout_seconds is not None and self.request_timeout_seconds <= 0:
            raise ValueError(f"request_timeout_seconds={self.request_timeout_seconds!r}: expected > 0")

    @property
    def request_timeout(self) -> float:
        return self.request_timeout_seconds or self.renew_deadline_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, namespace_file: Path = NAMESPACE_FILE) -> LeaseConfig | None:
        """The chart's settings: None unless NAS_LEADER_ELECTION is true (the default is off: `kopf run` on a
        laptop, or one replica, needs no Lease and no RBAC for one).

        NAS_LEADER_LEASE_NAME (default nas-operator), NAS_LEADER_LEASE_NAMESPACE (else POD_NAMESPACE, else the
        pod's own namespace file, else "default"), NAS_POD_NAME (the identity; else host name + random suffix),
        NAS_LEASE_SECONDS (15), NAS_RENEW_DEADLINE_SECONDS (10), NAS_LEASE_RETRY_SECONDS (2).
        ValueError names the variable that is wrong.
        """
        if not _flag("NAS_LEADER_ELECTION", env, default=False):
            return None
        namespace = env.get("NAS_LEADER_LEASE_NAMESPACE", "").strip() or env.get("POD_NAMESPACE", "").strip()
        if not namespace:
            try:
                namespace = namespace_file.read_text().strip()
            except OSError:
                namespace = ""
        lease = _number("NAS_LEASE_SECONDS", env, 15)
        if lease != int(lease):
            raise ValueError(f"NAS_LEASE_SECONDS={env['NAS_LEASE_SECONDS']!r}: expected whole seconds")
        return cls(
            name=env.get("NAS_LEADER_LEASE_NAME", "").strip() or "nas-operator",
            namespace=namespace or "default",
            identity=env.get("NAS_POD_NAME", "").strip() or _default_identity(),
            lease_seconds=int(lease),
            renew_deadline_seconds=_number("NAS_RENEW_DEADLINE_SECONDS", env, 10.0),
            retry_seconds=_number("NAS_LEASE_RETRY_SECONDS", env, 2.0),
        )


@dataclass(frozen=True)
class _Record:
    """The Lease spec fields that make up client-go's LeaderElectionRecord; timestamps stay the strings they are
    on the wire (compared, never parsed: only the holder's clock wrote them)."""

    holder: str
    duration: int
    acquired: str
    renewed: str
    transitions: int

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> _Record:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),  # none: expired at once, as in client-go
            acquired=str(spec.get("acquireTime") or ""),
            renewed=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


def _micro_time() -> str:
    """A MicroTime as the API server parses it (always six fraction digits; datetime.isoformat drops them at 0)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for one Lease.

    `wait_until_leader()` blocks until this candidate holds the Lease; `start_renewing()` then keeps it on a daemon
    thread and calls `on_lost` exactly once per term if it is lost (no successful renewal for
    `renew_deadline_seconds`, or the Lease seen in another holder's name); `release()` hands it over on a clean
    shutdown. `try_acquire_or_renew()` is the single attempt all of them are made of.
    """

    def __init__(
        self,
        api_client: Any,
        config: LeaseConfig,
        on_lost: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.config = config
        self._api: Any = client.CoordinationV1Api(api_client)
        self._on_lost = on_lost
        self._clock = clock
        self._attempt_lock = threading.Lock()  # one attempt (read, then write) at a time
        self._flag_lock = threading.Lock()  # guards _leading and _lost_notified against the renew thread
        self._observed: _Record | None = None
        self._observed_at = 0.0  # our clock when the current record was first seen (or written by us)
        self._leading = False
        self._renewed_at = -math.inf  # our clock just BEFORE the last successful write: the conservative end
        self._lost_notified = False
        self._created_at = clock()
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- state, for the operator's health endpoint and metrics --------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while we hold the Lease and are within the renew deadline of our last successful write.

        Conservative on purpose: a leader whose renew thread is stuck stops claiming leadership at the deadline,
        whether or not `on_lost` has run yet.
        """
        return self._leading and self._clock() < self._renewed_at + self.config.renew_deadline_seconds

    @property
    def holder(self) -> str | None:
        """The holder in the last record we read or wrote; None when there was none (absent or released)."""
        if self._observed is None or not self._observed.holder:
            return None
        return self._observed.holder

    @property
    def transitions(self) -> int | None:
        """The Lease's leaseTransitions as last seen; None before the first successful read."""
        return self._observed.transitions if self._observed is not None else None

    @property
    def last_attempt_monotonic(self) -> float | None:
        """Our clock at the end of the last attempt (won, lost or failed); None before the first."""
        return self._last_attempt

    @property
    def last_error(self) -> str | None:
        """Why the last attempt failed, when it failed with an error (not when the Lease was simply held)."""
        return self._last_error

    def healthy(self, now: float | None = None) -> bool:
        """Whether the elector is still making attempts, for a liveness probe that must answer for a standby too.

        A standby attempts every retry (with jitter) and each attempt takes at most two calls; a leader renews at
        the same rate. Silence for longer than that plus one more retry means the thread that should be trying is
        gone or stuck, and the pod should be restarted. After `release()` nobody is expected to try.
        """
        now = self._clock() if now is None else now
        config = self.config
        allowed = config.retry_seconds * (2 + JITTER) + 2 * config.request_timeout
        last = self._last_attempt if self._last_attempt is not None else self._created_at
        return now - last <= allowed

    # -- the attempt ---------------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt: take the Lease if it is free or expired, renew it if it is ours. True: we hold it now.

        Any error (a timeout, a 5xx, a lost write race) is a failed attempt, not an exception: the caller's loop
        retries, and only the renew deadline decides when a leader has lost. Seeing the Lease in another
        holder's name while we lead ends our term at once (`on_lost`).
        """
        with self._attempt_lock:
            try:
                won, deposed_by = self._attempt()
                self._last_error = None
            except Exception as exc:
                won, deposed_by = False, None
                status = getattr(exc, "status", None)  # an ApiException's str() carries every header and the body
                detail = f"{status} {getattr(exc, 'reason', '')}" if status is not None else str(exc)
                message = f"{type(exc).__name__}: {detail}".strip()
                level = logging.DEBUG if message == self._last_error else logging.WARNING
                log.log(level, "lease %s/%s: attempt failed: %s", self.config.namespace, self.config.name, message)
                self._last_error = message
            self._last_attempt = self._clock()
        if deposed_by is not None:
            self._lose(deposed_by)
        return won

    def _timeout(self, now: float) -> float:
        """A leader's calls end by its renew deadline (as client-go's renew context does); a standby's by the
        configured bound."""
        timeout = self.config.request_timeout
        if self.is_leader:
            timeout = min(timeout, self._renewed_at + self.config.renew_deadline_seconds - now)
        return max(timeout, 0.05)

    def _attempt(self) -> tuple[bool, str | None]:
        """(won, why we are no longer the leader or None). Called under the attempt lock."""
        from kubernetes.client.exceptions import ApiException

        config = self.config
        started = self._clock()
        try:
            response = self._api.read_namespaced_lease(
                config.name, config.namespace, _request_timeout=self._timeout(started), _preload_content=False
            )
            lease: dict[str, Any] | None = json.loads(response.data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None

        stamp = _micro_time()
        if lease is None:
            if self._leading:  # deleted under us: someone may be creating it right now
                with self._flag_lock:
                    self._leading = False
                return False, "the Lease was deleted"
            spec = {
                "holderIdentity": config.identity,
                "leaseDurationSeconds": config.lease_seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            }
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": config.name, "namespace": config.namespace},
                "spec": spec,
            }
            try:
                self._api.create_namespaced_lease(config.namespace, body, _request_timeout=self._timeout(self._clock()))
            except ApiException as exc:
                if exc.status == 409:  # another candidate created it between our read and our create
                    log.debug("lease %s/%s: lost the race to create it", config.namespace, config.name)
                    return False, None
                raise
            self._won(_Record.of(spec), started)
            return True, None

        spec = dict(lease.get("spec") or {})
        record = _Record.of(spec)
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if record.holder != config.identity:
            if self._leading:
                with self._flag_lock:
                    self._leading = False
                return (
                    False,
                    f"the Lease is now held by {record.holder!r}" if record.holder else "the Lease was emptied",
                )
            if record.holder and now < self._observed_at + record.duration:
                return False, None  # held, and we have not seen it go unrenewed for a whole lease yet
            acquired, transitions = stamp, record.transitions + 1
        else:  # ours: a renewal (or this pod's restarted container taking back its own Lease)
            acquired, transitions = record.acquired or stamp, record.transitions

        spec.update(
            holderIdentity=config.identity,
            leaseDurationSeconds=config.lease_seconds,
            acquireTime=acquired,
            renewTime=stamp,
            leaseTransitions=transitions,
        )
        lease["spec"] = spec
        lease.setdefault("metadata", {}).pop("managedFields", None)
        try:
            # metadata.resourceVersion is the one we read: a write that races another fails with 409.
            self._api.replace_namespaced_lease(
                config.name, config.namespace, lease, _request_timeout=self._timeout(self._clock())
            )
        except ApiException as exc:
            if exc.status == 409:
                log.debug("lease %s/%s: lost a write race", config.namespace, config.name)
                return False, None
            raise
        self._won(_Record.of(spec), started)
        return True, None

    def _won(self, record: _Record, started: float) -> None:
        new_term = not self._leading
        self._observed, self._observed_at = record, started
        self._renewed_at = started
        with self._flag_lock:
            self._leading = True
            if new_term:
                self._lost_notified = False
        if new_term:
            log.info(
                "lease %s/%s: %s is the leader (transition %d)",
                self.config.namespace,
                self.config.name,
                self.config.identity,
                record.transitions,
            )

    def _lose(self, reason: str) -> None:
        """End the term and call on_lost, once per term, never after release()."""
        with self._flag_lock:
            self._leading = False
            if self._lost_notified:
                return
            self._lost_notified = True
        log.error("lease %s/%s: leadership lost: %s", self.config.namespace, self.config.name, reason)
        self._stop.set()
        try:
            self._on_lost()
        except Exception:
            log.exception("on_lost failed")

    # -- the loops -----------------------------------------------------------------------------------------------

    def wait_until_leader(self, stop: threading.Event | None = None) -> bool:
        """Block until we hold the Lease (True), trying every retry_seconds (with jitter), or until `stop` is set
        (False)."""
        waiting_on: str | None = None
        while True:
            if self.try_acquire_or_renew():
                return True
            if self.holder is not None and self.holder != waiting_on:
                waiting_on = self.holder
                log.info("lease %s/%s: held by %s, standing by", self.config.namespace, self.config.name, waiting_on)
            delay = self.config.retry_seconds * (1 + random.random() * JITTER)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return False

    def start_renewing(self) -> None:
        """Renew every retry_seconds on a daemon thread; with no successful renewal for renew_deadline_seconds,
        call on_lost once and stop. Needs the Lease (after wait_until_leader())."""
        if self._renewer is not None and self._renewer.is_alive():
            return
        if not self.is_leader:
            raise RuntimeError("start_renewing() needs the Lease: call wait_until_leader() first")
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="nas-leader-renew", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        config = self.config
        while not self._stop.is_set():
            deadline = self._renewed_at + config.renew_deadline_seconds
            now = self._clock()
            if not self._leading:
                return  # deposed by an attempt (on_lost already called) or released
            if now >= deadline:
                self._lose(f"no successful renewal for {config.renew_deadline_seconds:g}s ({self._last_error})")
                return
            if self._stop.wait(min(config.retry_seconds, deadline - now)):
                return
            if self._clock() < deadline:
                self.try_acquire_or_renew()

    def stop_renewing(self, timeout: float | None = None) -> None:
        """Stop the renew thread without touching the Lease (a standby takes over once it expires).

        Waits for an attempt in flight, which its request timeout bounds.
        """
        self._stop.set()
        renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(self.config.request_timeout * 2 + 1 if timeout is None else timeout)

    def release(self) -> bool:
        """On a clean shutdown: stop renewing and, if we hold the Lease, write it back with no holder and a one-second
        duration, so a standby takes over at its next attempt instead of a whole lease later (client-go's
        ReleaseOnCancel). Call it only once the operator has stopped acting as leader. True if released.
        """
        with self._flag_lock:
            self._lost_notified = True  # a release is no loss: on_lost must not run from here on
            leading, self._leading = self._leading, False
        self.stop_renewing()
        if not leading:
            return False
        config = self.config
        with self._attempt_lock:
            try:
                response = self._api.read_namespaced_lease(
                    config.name, config.namespace, _request_timeout=config.request_timeout, _preload_content=False
                )
                lease = json.loads(response.data)
                spec = dict(lease.get("spec") or {})
                if spec.get("holderIdentity") != config.identity:
                    return False
                stamp = _micro_time()
                spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=stamp, renewTime=stamp)
                lease["spec"] = spec
                lease.setdefault("metadata", {}).pop("managedFields", None)
                self._api.replace_namespaced_lease(
                    config.name, config.namespace, lease, _request_timeout=config.request_timeout
                )
            except Exception as exc:  # an API error, a timeout: the Lease then expires as if we had been killed
                log.warning("lease %s/%s: not released (it expires instead): %s", config.namespace, config.name, exc)
                return False
            self._observed, self._observed_at = _Record.of(spec), self._clock()
        log.info("lease %s/%s: released by %s", config.namespace, config.name, config.identity)
        return True
