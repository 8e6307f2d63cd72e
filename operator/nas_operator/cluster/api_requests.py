"""Client-side rate limiting and accounting of the operator's own Kubernetes API requests.

Why: one operator serves every experiment in the cluster. Each reconcile step lists Jobs and
Pods, patches status, writes Events and state, so 200 experiments stepping every 2 s can send
the API server hundreds of requests a second, and API Priority and Fairness then throttles the
whole operator, Kopf's own watches included. A token bucket in front of our client keeps the
operator a polite tenant (`NAS_API_QPS`, `NAS_API_BURST`, the same model as client-go's
`--kube-api-qps/--kube-api-burst`), and counting every request by verb, resource, namespace
and experiment shows which experiment is the noisy one.

The hook is the REST layer of the `kubernetes` client: every typed `*Api` method, the dynamic
client and `kubernetes.watch.Watch` all end in `ApiClient.call_api`, which calls
`ApiClient.rest_client.request(method, url, ...)` (kubernetes 37: `client/api_client.py`,
`client/rest.py`). Wrapping that one bound method on the instance covers every request made
through the ApiClient and every `*Api` object built on it, and leaves other ApiClients alone.
Outside it: `kubernetes.stream` (exec/attach/port-forward open a websocket, not a REST
request) and Kopf, which talks to the API server through its own aiohttp session.

Attribution: the controller wraps a reconcile step in `attributed_to(namespace, experiment)`;
requests made in that context carry the experiment's name. A contextvar does not follow work
into another thread by itself: `threading.Thread` and `ThreadPoolExecutor.submit` (and
`loop.run_in_executor`) start from an empty context, so enter `attributed_to` inside the step
thread, or run the work through `contextvars.copy_context().run` (`asyncio.to_thread` copies
the context for you). A request made outside any attribution is counted with experiment "".
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_QPS = 50.0
DEFAULT_BURST = 100
WINDOW_SECONDS = 60.0
# A key's timestamps are capped so that a runaway loop cannot grow memory without bound;
# `per_minute` saturates at this value (200 requests a second from one experiment is already an incident).
MAX_PER_KEY = 12_000

OnRequest = Callable[[str, str, str, str], None]  # (verb, resource, namespace, experiment)

current_experiment: ContextVar[tuple[str, str] | None] = ContextVar("nas_current_experiment", default=None)
"""(namespace, experiment) whose work the current context is doing; None outside a step."""


@contextlib.contextmanager
def attributed_to(namespace: str, experiment: str) -> Iterator[None]:
    """Attribute the Kubernetes requests made in this context (this thread, this task) to one experiment.

    Nests and restores the outer attribution on exit, exception included. It does not reach
    threads started inside the block (see the module docstring).
    """
    token = current_experiment.set((namespace, experiment))
    try:
        yield
    finally:
        current_experiment.reset(token)


# -- rate limiting ----------------------------------------------------------------------------


class RateLimitTimeout(TimeoutError):
    """No token would be available within the caller's timeout; nothing was consumed."""


@dataclass(frozen=True)
class RateLimiterStats:
    """Cumulative counters (Prometheus counters): how often and how long requests were held back."""

    acquired_total: int
    throttled_total: int  # acquisitions that had to wait
    wait_seconds_total: float
    timeouts_total: int


class RateLimiter:
    """A token bucket: up to `burst` requests at once, then `qps` a second; `qps <= 0` turns it off.

    Tokens are reserved, not polled: a caller that finds the bucket empty takes a token "on
    credit" (the count goes negative) and sleeps exactly until that token would have been
    refilled. Waiters are therefore served in arrival order, nobody busy-waits, and by any time
    t after a full bucket at most `burst + qps * t` acquisitions have returned. `clock` and
    `sleep` are injectable so that tests can check the arithmetic without waiting.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if math.isnan(qps):
            raise ValueError("qps must be a number, got NaN")
        self.qps = qps
        self.burst = burst
        self.enabled = 0 < qps < math.inf
        if self.enabled and burst < 1:
            raise ValueError(f"burst must be at least 1 when qps > 0, got {burst}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._last = clock()
        self._acquired = 0
        self._throttled = 0
        self._waited = 0.0
        self._timeouts = 0

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter:
        """The operator's limiter from NAS_API_QPS (default 50; 0 turns limiting off) and NAS_API_BURST (100)."""
        qps, burst = limits_from_env(env)
        return cls(qps, burst, clock=clock, sleep=sleep)

    def acquire(self, timeout: float | None = None) -> float:
        """Take one token, sleeping until it is available; returns the seconds slept.

        With a `timeout`, a caller whose token would come later than that raises
        `RateLimitTimeout` at once, without sleeping and without consuming anything.
        """
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._last) * self.qps)
            self._last = now
            wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.qps
            if timeout is not None and wait > timeout:
                self._timeouts += 1
                raise RateLimitTimeout(
                    f"Kubernetes API rate limit ({self.qps:g} qps, burst {self.burst}): "
                    f"next request slot in {wait:.2f} s, over the {timeout:g} s allowed"
                )
            self._tokens -= 1.0
            self._acquired += 1
            if wait > 0:
                self._throttled += 1
                self._waited += wait
        if wait > 0:
            self._sleep(wait)
        return wait

    def stats(self) -> RateLimiterStats:
        with self._lock:
            return RateLimiterStats(self._acquired, self._throttled, self._waited, self._timeouts)


def limits_from_env(env: Mapping[str, str] = os.environ) -> tuple[float, int]:
    """(qps, burst) from NAS_API_QPS and NAS_API_BURST; a malformed value raises ValueError naming its variable.

    Failing at start is deliberate: a typo in the chart would otherwise run the operator
    unthrottled or with a limiter that starves every experiment, with no hint why.
    """
    raw_qps = env.get("NAS_API_QPS", "").strip()
    raw_burst = env.get("NAS_API_BURST", "").strip()
    qps = DEFAULT_QPS
    if raw_qps:
        try:
            qps = float(raw_qps)
        except ValueError:
            raise ValueError(
                f"NAS_API_QPS must be a number of requests a second (0 = no limit), got {raw_qps!r}"
            ) from None
        if not math.isfinite(qps) or qps < 0:
            raise ValueError(f"NAS_API_QPS must be a finite number >= 0 (0 = no limit), got {raw_qps!r}")
    burst = DEFAULT_BURST
    if raw_burst:
        try:
            burst = int(raw_burst)
        except ValueError:
            raise ValueError(f"NAS_API_BURST must be a whole number of requests, got {raw_burst!r}") from None
        if burst < 1:
            raise ValueError(f"NAS_API_BURST must be at least 1, got {raw_burst!r}")
    return qps, burst


# -- request parsing --------------------------------------------------------------------------

# Subresources of a Namespace object: /api/v1/namespaces/<name>/status is the namespace's own
# status, not a resource called "status" inside it (the API server's RequestInfoFactory rule).
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_TRUE = frozenset({"1", "t", "true"})
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass(frozen=True)
class RequestInfo:
    """What a request does, in the API server's own terms (as in its audit log and RBAC rules)."""

    verb: str  # get list watch create update patch delete deletecollection (lower-case method otherwise)
    resource: str  # plural, "" for a non-resource path such as /version or API discovery
    namespace: str  # "" for cluster-scoped resources and all-namespaces lists
    name: str = ""
    subresource: str = ""  # status, log, scale, ...
    group: str = ""  # "" for the core group (/api/v1)
    version: str = ""


def parse_request(method: str, url: str) -> RequestInfo:
    """Map an HTTP request of the Kubernetes API to verb, resource and namespace.

    Follows the API server's RequestInfoFactory: GET of a named object is "get", of a
    collection "list", or "watch" with `?watch=true` or the legacy `/watch/` prefix; DELETE of
    a collection is "deletecollection". A Namespace object's own path (`/api/v1/namespaces/x`)
    reports namespace "x", as the API server does. A path prefix in the client's host (a proxy
    such as Rancher's `/k8s/clusters/<id>`) is skipped: parsing starts at the first `api` or
    `apis` segment.
    """
    method = method.upper()
    split = urlsplit(url)
    parts = [unquote(part) for part in split.path.split("/") if part]
    start = next((i for i, part in enumerate(parts) if part in ("api", "apis")), None)
    group = version = ""
    rest: list[str] = []
    if start is not None:
        if parts[start] == "api" and len(parts) > start + 1:
            version, rest = parts[start + 1], parts[start + 2 :]
        elif parts[start] == "apis" and len(parts) > start + 2:
            group, version, rest = parts[start + 1], parts[start + 2], parts[start + 3 :]
    if not rest:  # discovery (/api, /apis/batch/v1), /version, /healthz, ...
        return RequestInfo(verb=method.lower(), resource="", namespace="", group=group, version=version)

    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    if not rest:
        return RequestInfo(verb=method.lower(), resource="", namespace=namespace, group=group, version=version)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""

    if method in ("GET", "HEAD"):
        if watch_prefix:
            verb = "watch"
        elif name:
            verb = "get"
        else:
            watch = parse_qs(split.query).get("watch", [""])[-1].lower() in _TRUE
            verb = "watch" if watch else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return RequestInfo(verb, resource, namespace, name, subresource, group, version)


# -- instrumentation --------------------------------------------------------------------------

_UNWRAPPED = "_nas_unwrapped_request"


def instrument(
    api_client: Any,
    limiter: RateLimiter,
    on_request: OnRequest | None = None,
    *,
    acquire_timeout: float | None = None,
) -> Any:
    """Make every request through `api_client` take a token from `limiter`, then report it; returns the client.

    `on_request(verb, resource, namespace, experiment)` runs in the requesting thread after
    the token is taken and before the request is sent, so requests that then fail are counted
    too (the API server saw them). Namespace comes from the URL; experiment from
    `current_experiment` ("" outside `attributed_to`). A callback that raises is logged and
    ignored: accounting must never fail a request. With `acquire_timeout`, a request that
    would wait longer for a token raises `RateLimitTimeout` instead of being sent.

    Instrumenting the same client again replaces the limiter and callback (no double counting).
    """
    rest_client: Any = getattr(api_client, "rest_client", None)
    if not callable(getattr(rest_client, "request", None)):
        raise TypeError(
            f"{type(api_client).__name__} has no rest_client.request: not a sync kubernetes.client.ApiClient "
            "of the supported versions"
        )
    original: Callable[..., Any] = getattr(rest_client, _UNWRAPPED, None) or rest_client.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        limiter.acquire(acquire_timeout)
        if on_request is not None:
            attribution = current_experiment.get()
            try:
                info = parse_request(method, url)
                on_request(info.verb, info.resource, info.namespace, attribution[1] if attribution else "")
            except Exception:
                log.exception("accounting of a Kubernetes API request failed (request sent anyway)")
        return original(method, url, *args, **kwargs)

    setattr(rest_client, _UNWRAPPED, original)
    rest_client.request = request
    return api_client


# -- accounting ----------------------------------------------------------------------------------


class RequestCounter:
    """Requests per (namespace, experiment) over the last minute, and cumulative totals per verb.

    `record` has the `on_request` signature, so `instrument(client, limiter, counter.record)`
    wires it. Timestamps live in a deque per key, pruned as they fall out of the 60 s window;
    keys with nothing left in the window are dropped on the next sweep (at most once a
    window), so deleted experiments vanish without a call to `forget`. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_per_key: int = MAX_PER_KEY) -> None:
        self._clock = clock
        self._max_per_key = max_per_key
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str], collections.deque[float]] = {}
        self._verbs: collections.Counter[str] = collections.Counter()
        self._resources: collections.Counter[tuple[str, str]] = collections.Counter()
        self._last_sweep = clock()

    def record(self, verb: str, resource: str, namespace: str, experiment: str) -> None:
        now = self._clock()
        with self._lock:
            self._verbs[verb] += 1
            self._resources[(verb, resource)] += 1
            key = (namespace, experiment)
            recent = self._recent.get(key)
            if recent is None:
                recent = self._recent[key] = collections.deque(maxlen=self._max_per_key)
            recent.append(now)
            if now - self._last_sweep >= WINDOW_SECONDS:
                self._sweep_locked(now)

    def per_minute(self, namespace: str, experiment: str) -> int:
        """Requests of that (namespace, experiment) in the last 60 s (experiment "" = unattributed ones)."""
        now = self._clock()
        with self._lock:
            recent = self._recent.get((namespace, experiment))
            if recent is None:
                return 0
            _prune(recent, now)
            return len(recent)

    def per_minute_all(self) -> dict[tuple[str, str], int]:
        """Requests in the last 60 s for every (namespace, experiment) that made any: a gauge's samples."""
        now = self._clock()
        with self._lock:
            self._sweep_locked(now)
            return {key: len(stamps) for key, stamps in self._recent.items()}

    def totals(self) -> dict[str, int]:
        """Requests per verb since start (a counter's samples)."""
        with self._lock:
            return dict(self._verbs)

    def totals_by_resource(self) -> dict[tuple[str, str], int]:
        """Requests per (verb, resource) since start."""
        with self._lock:
            return dict(self._resources)

    def forget(self, namespace: str, experiment: str) -> None:
        """Drop a deleted experiment's window at once, rather than when it ages out."""
        with self._lock:
            self._recent.pop((namespace, experiment), None)

    def _sweep_locked(self, now: float) -> None:
        for key in list(self._recent):
            stamps = self._recent[key]
            _prune(stamps, now)
            if not stamps:
                del self._recent[key]
        self._last_sweep = now


def _prune(stamps: collections.deque[float], now: float) -> None:
    horizon = now - WINDOW_SECONDS
    while stamps and stamps[0] <= horizon:
        stamps.popleft()
