"""Rate limiting and accounting of the operator's Kubernetes API requests.

The bucket's arithmetic is checked with a fake clock; `instrument` is checked on a real
`kubernetes.client.ApiClient` talking to a stub API server on 127.0.0.1, so the hook is the
one the installed client really calls.
"""

from __future__ import annotations

import contextvars
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nas_operator.cluster.api_requests import (
    DEFAULT_BURST,
    DEFAULT_QPS,
    RateLimiter,
    RateLimitTimeout,
    RequestCounter,
    RequestInfo,
    attributed_to,
    current_experiment,
    instrument,
    limits_from_env,
    parse_request,
)

# -- the token bucket ---------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_qps() -> None:
    t = FakeTime()
    limiter = RateLimiter(2.0, 3, clock=t.clock, sleep=t.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire() == pytest.approx(0.5)
    assert limiter.acquire() == pytest.approx(0.5)
    assert t.now == pytest.approx(101.0)
    t.now += 0.25  # half a token refilled
    assert limiter.acquire() == pytest.approx(0.25)
    t.now += 60  # refills up to the burst, never beyond
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire() == pytest.approx(0.5)
    stats = limiter.stats()
    assert (stats.acquired_total, stats.throttled_total) == (10, 4)
    assert stats.wait_seconds_total == pytest.approx(1.75)


def test_reservations_queue_up_without_a_clock_moving() -> None:
    """Concurrent callers that find the bucket empty each reserve the next token, in order."""
    t = FakeTime()
    limiter = RateLimiter(4.0, 1, clock=t.clock, sleep=lambda _: None)  # sleeping callers never return early
    waits = [limiter.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_timeout_raises_without_consuming() -> None:
    t = FakeTime()
    limiter = RateLimiter(1.0, 1, clock=t.clock, sleep=t.sleep)
    assert limiter.acquire(timeout=0.0) == 0.0
    with pytest.raises(RateLimitTimeout, match="1 qps"):
        limiter.acquire(timeout=0.5)
    assert t.slept == []
    assert limiter.acquire(timeout=1.0) == pytest.approx(1.0)  # the failed call took nothing
    assert limiter.stats().timeouts_total == 1


@pytest.mark.parametrize("qps", [0.0, -1.0, float("inf")])
def test_non_positive_qps_disables(qps: float) -> None:
    t = FakeTime()
    limiter = RateLimiter(qps, 0, clock=t.clock, sleep=t.sleep)
    assert not limiter.enabled
    assert all(limiter.acquire(timeout=0) == 0.0 for _ in range(1000))
    assert t.slept == []


def test_invalid_limiter() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(5.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        RateLimiter(float("nan"), 1)


def test_threads_never_exceed_burst_plus_rate() -> None:
    qps, burst, threads, each = 100.0, 10, 20, 5
    limiter = RateLimiter(qps, burst)
    start = time.monotonic()
    done: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(each):
            limiter.acquire()
            with lock:
                done.append(time.monotonic() - start)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(10)
    done.sort()
    assert len(done) == threads * each
    for count, at in enumerate(done, start=1):
        assert count <= burst + qps * at + 1e-6, (count, at)
    assert done[-1] >= (threads * each - burst) / qps - 0.02


def test_limits_from_env() -> None:
    assert limits_from_env({}) == (DEFAULT_QPS, DEFAULT_BURST) == (50.0, 100)
    assert limits_from_env({"NAS_API_QPS": "5.5", "NAS_API_BURST": "7"}) == (5.5, 7)
    assert limits_from_env({"NAS_API_QPS": " ", "NAS_API_BURST": ""}) == (50.0, 100)
    limiter = RateLimiter.from_env({"NAS_API_QPS": "0"})
    assert not limiter.enabled


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"NAS_API_QPS": "fast"}, "NAS_API_QPS"),
        ({"NAS_API_QPS": "-1"}, "NAS_API_QPS"),
        ({"NAS_API_QPS": "nan"}, "NAS_API_QPS"),
        ({"NAS_API_QPS": "inf"}, "NAS_API_QPS"),
        ({"NAS_API_BURST": "2.5"}, "NAS_API_BURST"),
        ({"NAS_API_BURST": "0"}, "NAS_API_BURST"),
        ({"NAS_API_BURST": "lots"}, "NAS_API_BURST"),
    ],
)
def test_invalid_env_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        limits_from_env(env)


# -- request parsing --------------------------------------------------------------------------

H = "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", f"{H}/apis/batch/v1/namespaces/ns1/jobs/j1", ("get", "jobs", "ns1", "j1", "")),
        ("GET", f"{H}/apis/batch/v1/namespaces/ns1/jobs?labelSelector=a%3Db", ("list", "jobs", "ns1", "", "")),
        ("GET", f"{H}/api/v1/namespaces/ns1/pods?watch=true&resourceVersion=5", ("watch", "pods", "ns1", "", "")),
        ("GET", f"{H}/api/v1/namespaces/ns1/pods?watch=false", ("list", "pods", "ns1", "", "")),
        ("GET", f"{H}/api/v1/watch/namespaces/ns1/pods", ("watch", "pods", "ns1", "", "")),
        ("GET", f"{H}/api/v1/namespaces/ns1/pods/p/log", ("get", "pods", "ns1", "p", "log")),
        ("GET", f"{H}/apis/batch/v1/jobs", ("list", "jobs", "", "", "")),
        ("GET", f"{H}/api/v1/nodes/n1", ("get", "nodes", "", "n1", "")),
        ("POST", f"{H}/api/v1/namespaces/ns1/configmaps", ("create", "configmaps", "ns1", "", "")),
        ("POST", f"{H}/api/v1/namespaces/ns1/events", ("create", "events", "ns1", "", "")),
        ("PUT", f"{H}/apis/coordination.k8s.io/v1/namespaces/ns1/leases/l", ("update", "leases", "ns1", "l", "")),
        (
            "PATCH",
            f"{H}/apis/nas.operator.dev/v1alpha1/namespaces/ns1/nasexperiments/e/status",
            ("patch", "nasexperiments", "ns1", "e", "status"),
        ),
        ("DELETE", f"{H}/apis/batch/v1/namespaces/ns1/jobs/j1", ("delete", "jobs", "ns1", "j1", "")),
        ("DELETE", f"{H}/api/v1/namespaces/ns1/pods", ("deletecollection", "pods", "ns1", "", "")),
        ("GET", f"{H}/api/v1/namespaces", ("list", "namespaces", "", "", "")),
        ("GET", f"{H}/api/v1/namespaces/ns1", ("get", "namespaces", "ns1", "ns1", "")),
        ("PUT", f"{H}/api/v1/namespaces/ns1/finalize", ("update", "namespaces", "ns1", "ns1", "finalize")),
        ("GET", "https://rancher/k8s/clusters/c-1/api/v1/namespaces/ns1/pods", ("list", "pods", "ns1", "", "")),
        ("GET", f"{H}/version", ("get", "", "", "", "")),
        ("GET", f"{H}/apis/batch/v1", ("get", "", "", "", "")),
        ("GET", f"{H}/api", ("get", "", "", "", "")),
    ],
)
def test_parse_request(method: str, url: str, expected: tuple[str, str, str, str, str]) -> None:
    info = parse_request(method, url)
    assert (info.verb, info.resource, info.namespace, info.name, info.subresource) == expected


def test_parse_request_keeps_group_and_version() -> None:
    assert parse_request("get", f"{H}/apis/batch/v1/namespaces/a/jobs") == RequestInfo(
        "list", "jobs", "a", group="batch", version="v1"
    )


# -- accounting -----------------------------------------------------------------------------------


def test_counter_window_and_totals() -> None:
    t = FakeTime()
    counter = RequestCounter(clock=t.clock)
    for _ in range(3):
        counter.record("list", "pods", "ns1", "e1")
    counter.record("patch", "nasexperiments", "ns1", "e1")
    counter.record("get", "nodes", "", "")
    t.now += 30
    counter.record("list", "jobs", "ns1", "e1")
    counter.record("list", "jobs", "ns2", "e2")
    assert counter.per_minute("ns1", "e1") == 5
    assert counter.per_minute("ns2", "e2") == 1
    assert counter.per_minute("ns9", "none") == 0
    t.now += 30  # the first four fall out of the window
    assert counter.per_minute("ns1", "e1") == 1
    assert counter.per_minute_all() == {("ns1", "e1"): 1, ("ns2", "e2"): 1}
    assert counter.totals() == {"list": 5, "patch": 1, "get": 1}
    assert counter.totals_by_resource()[("list", "jobs")] == 2
    counter.forget("ns2", "e2")
    assert counter.per_minute("ns2", "e2") == 0
    t.now += 61
    counter.record("get", "jobs", "ns3", "e3")  # a sweep drops keys with nothing left in the window
    assert counter.per_minute_all() == {("ns3", "e3"): 1}
    assert counter.totals()["list"] == 5  # totals never expire


def test_counter_is_bounded_per_key() -> None:
    t = FakeTime()
    counter = RequestCounter(clock=t.clock, max_per_key=10)
    for _ in range(25):
        counter.record("get", "pods", "ns", "e")
    assert counter.per_minute("ns", "e") == 10
    assert counter.totals() == {"get": 25}


def test_counter_is_thread_safe() -> None:
    counter = RequestCounter()

    def worker(i: int) -> None:
        for _ in range(500):
            counter.record("get", "pods", "ns", f"e{i % 4}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert counter.totals() == {"get": 16 * 500}
    assert sum(counter.per_minute_all().values()) == 16 * 500


def test_attribution_nests_and_stays_in_its_context() -> None:
    assert current_experiment.get() is None
    with attributed_to("ns1", "outer"):
        with attributed_to("ns1", "inner"):
            assert current_experiment.get() == ("ns1", "inner")
        assert current_experiment.get() == ("ns1", "outer")
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(current_experiment.get()))
        thread.start()
        thread.join()
        assert seen == [None]  # a new thread starts from an empty context
        assert contextvars.copy_context().run(current_experiment.get) == ("ns1", "outer")
    assert current_experiment.get() is None


# -- instrument on a real ApiClient against a stub API server --------------------------------------


class StubApiServer:
    """A tiny API server: answers every request with a plausible object or list, and logs what it got."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without this, Nagle plus delayed ACKs add 40 ms a request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.seen.append((self.command, self.path))
                path = self.path.split("?")[0].rstrip("/")
                parts = path.split("/")
                body: dict[str, Any]
                if "watch=true" in self.path:
                    event = {"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}}}
                    payload = (json.dumps(event) + "\n").encode()
                elif self.command == "GET" and parts[-1] in ("jobs", "pods"):
                    body = {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []}
                    payload = json.dumps(body).encode()
                else:
                    name = parts[-1] if self.command != "POST" else "created"
                    body = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": name, "namespace": "x"}}
                    payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubApiServer]:
    server = StubApiServer()
    yield server
    server.close()


def _client(host: str) -> Any:
    from kubernetes import client

    configuration = client.Configuration(host=host)
    return client.ApiClient(configuration)


def test_instrument_counts_every_request(stub: StubApiServer) -> None:
    from kubernetes import client

    calls: list[tuple[str, str, str, str]] = []
    counter = RequestCounter()

    def on_request(verb: str, resource: str, namespace: str, experiment: str) -> None:
        calls.append((verb, resource, namespace, experiment))
        counter.record(verb, resource, namespace, experiment)

    api = instrument(_client(stub.host), RateLimiter(0, 0), on_request)
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    objects = client.CustomObjectsApi(api)
    with attributed_to("ns1", "exp1"):
        assert batch.read_namespaced_job("j1", "ns1").metadata.name == "j1"
        assert batch.list_namespaced_job("ns1", label_selector="a=b").items == []
        batch.patch_namespaced_job("j1", "ns1", {"metadata": {"labels": {"x": "y"}}})
        batch.create_namespaced_job("ns1", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j2"}})
        batch.delete_namespaced_job("j1", "ns1")
        objects.patch_namespaced_custom_object_status(
            "nas.operator.dev", "v1alpha1", "ns1", "nasexperiments", "exp1", {"status": {}}
        )
        raw = core.list_namespaced_pod("ns1", watch=True, _preload_content=False)
        assert b"ADDED" in raw.read()
    assert core.list_namespaced_pod("ns2").items == []  # outside any attribution
    assert calls == [
        ("get", "jobs", "ns1", "exp1"),
        ("list", "jobs", "ns1", "exp1"),
        ("patch", "jobs", "ns1", "exp1"),
        ("create", "jobs", "ns1", "exp1"),
        ("delete", "jobs", "ns1", "exp1"),
        ("patch", "nasexperiments", "ns1", "exp1"),
        ("watch", "pods", "ns1", "exp1"),
        ("list", "pods", "ns2", ""),
    ]
    assert len(stub.seen) == len(calls)  # every counted request really reached the server
    assert counter.per_minute("ns1", "exp1") == 7
    assert counter.per_minute("ns2", "") == 1
    assert counter.totals() == {"get": 1, "list": 2, "patch": 2, "create": 1, "delete": 1, "watch": 1}


def test_instrument_attribution_follows_the_thread_context(stub: StubApiServer) -> None:
    from kubernetes import client

    calls: list[tuple[str, str, str, str]] = []
    api = instrument(_client(stub.host), RateLimiter(0, 0), lambda *call: calls.append(call))
    core = client.CoreV1Api(api)

    def step(experiment: str) -> None:
        with attributed_to("ns1", experiment):
            core.list_namespaced_pod("ns1")

    threads = [threading.Thread(target=step, args=(f"e{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(experiment for *_, experiment in calls) == ["e0", "e1", "e2", "e3"]


def test_instrument_applies_the_limiter(stub: StubApiServer) -> None:
    from kubernetes import client

    limiter = RateLimiter(5.0, 1)
    core = client.CoreV1Api(instrument(_client(stub.host), limiter))
    start = time.monotonic()
    for _ in range(6):
        core.list_namespaced_pod("ns1")
    elapsed = time.monotonic() - start
    assert elapsed >= 0.95  # one from the burst, then five at 5 a second
    assert limiter.stats().acquired_total == 6
    assert limiter.stats().throttled_total == 5


def test_instrument_timeout_refuses_to_send(stub: StubApiServer) -> None:
    from kubernetes import client

    limiter = RateLimiter(0.5, 1)
    core = client.CoreV1Api(instrument(_client(stub.host), limiter, acquire_timeout=0.1))
    core.list_namespaced_pod("ns1")
    with pytest.raises(RateLimitTimeout):
        core.list_namespaced_pod("ns1")
    assert len(stub.seen) == 1


def test_instrument_twice_replaces_instead_of_stacking(stub: StubApiServer) -> None:
    from kubernetes import client

    first: list[tuple[str, ...]] = []
    second: list[tuple[str, ...]] = []
    api = _client(stub.host)
    instrument(api, RateLimiter(0, 0), lambda *call: first.append(call))
    instrument(api, RateLimiter(0, 0), lambda *call: second.append(call))
    client.CoreV1Api(api).list_namespaced_pod("ns1")
    assert (len(first), len(second), len(stub.seen)) == (0, 1, 1)


def test_a_failing_callback_does_not_fail_the_request(stub: StubApiServer) -> None:
    from kubernetes import client

    def boom(*_: str) -> None:
        raise RuntimeError("metrics down")

    core = client.CoreV1Api(instrument(_client(stub.host), RateLimiter(0, 0), boom))
    assert core.list_namespaced_pod("ns1").items == []


def test_instrument_rejects_what_it_cannot_hook() -> None:
    with pytest.raises(TypeError, match="rest_client"):
        instrument(object(), RateLimiter(0, 0))


def test_instrument_sees_watch_streams(stub: StubApiServer) -> None:
    from kubernetes import client, watch

    calls: list[tuple[str, ...]] = []
    core = client.CoreV1Api(instrument(_client(stub.host), RateLimiter(0, 0), lambda *call: calls.append(call)))
    with attributed_to("ns1", "exp1"):
        events = list(watch.Watch().stream(core.list_namespaced_pod, "ns1", timeout_seconds=1))
    assert [event["type"] for event in events] == ["ADDED"]
    assert calls == [("watch", "pods", "ns1", "exp1")]
