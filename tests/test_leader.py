"""Lease-based leader election (nas_operator.cluster.leader) against the real test control plane.

Short durations (a 3 s lease, 2 s renew deadline, 0.5 s retry) keep the file under half a minute; every wait
polls towards a deadline, so a slow machine makes a test slower, never wrong.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from nas_operator.cluster.leader import JITTER, LeaderElector, LeaseConfig
from tests.k8s.cluster import ControlPlane, free_port

pytestmark = pytest.mark.cluster
FAST = {"lease_seconds": 3, "renew_deadline_seconds": 2.0, "retry_seconds": 0.5}


class Candidate:
    """One replica: its own API client (as a separate process would have), an elector, and its on_lost calls."""

    def __init__(
        self, cluster: ControlPlane, namespace: str, identity: str, lease: str = "nas-operator", **durations: Any
    ) -> None:
        self.api_client: Any = config.new_client_from_config(str(cluster.kubeconfig))
        self.lost_at: list[float] = []
        settings = {**FAST, **durations}
        self.config = LeaseConfig(name=lease, namespace=namespace, identity=identity, **settings)
        self.elector = LeaderElector(self.api_client, self.config, lambda: self.lost_at.append(time.monotonic()))
        self.stop = threading.Event()

    def wait_in_thread(self) -> list[float]:
        """wait_until_leader() on a thread (until the test ends); the list gets the time it returned True."""
        won_at: list[float] = []

        def run() -> None:
            if self.elector.wait_until_leader(self.stop):
                won_at.append(time.monotonic())

        threading.Thread(target=run, daemon=True).start()
        return won_at


@pytest.fixture
def candidates(cluster: ControlPlane, namespace: str) -> Iterator[Callable[..., Candidate]]:
    made: list[Candidate] = []

    def make(identity: str, **kwargs: Any) -> Candidate:
        made.append(Candidate(cluster, namespace, identity, **kwargs))
        return made[-1]

    yield make
    for candidate in made:
        candidate.stop.set()
        candidate.elector.stop_renewing(timeout=5)


def read_lease(cluster: ControlPlane, namespace: str, name: str = "nas-operator") -> dict[str, Any]:
    lease: dict[str, Any] = json.loads(cluster.kubectl("get", "lease", name, "-n", namespace, "-o", "json").stdout)
    return lease["spec"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until condition() holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.02)
    return time.monotonic()


def test_the_first_candidate_creates_the_lease_and_the_second_stands_by(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    a, b = candidates("replica-a"), candidates("replica-b")
    assert a.elector.holder is None and not a.elector.is_leader
    assert a.elector.try_acquire_or_renew()
    assert a.elector.is_leader and a.elector.holder == "replica-a" and a.elector.transitions == 0
    spec = read_lease(cluster, namespace)
    assert spec["holderIdentity"] == "replica-a" and spec["leaseDurationSeconds"] == 3
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] == spec["renewTime"]

    assert not b.elector.try_acquire_or_renew()
    assert not b.elector.is_leader and b.elector.holder == "replica-a" and b.elector.last_error is None

    assert a.elector.try_acquire_or_renew()  # a renewal keeps the acquire time and the transition count
    renewed = read_lease(cluster, namespace)
    assert renewed["acquireTime"] == spec["acquireTime"] and renewed["renewTime"] > spec["renewTime"]
    assert renewed["leaseTransitions"] == 0
    assert a.elector.healthy() and b.elector.healthy() and b.elector.last_attempt_monotonic is not None


def test_a_standby_takes_over_only_once_the_leader_stops_renewing(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    a, b = candidates("replica-a"), candidates("replica-b")
    assert a.elector.wait_until_leader()
    a.elector.start_renewing()
    # Longer than a lease: without a's renewals b would have taken it by now.
    until = time.monotonic() + a.config.lease_seconds * 1.5
    while time.monotonic() < until:
        assert not b.elector.try_acquire_or_renew()
        assert a.elector.is_leader
        time.sleep(0.1)
    assert b.elector.holder == "replica-a"

    won_at = b.wait_in_thread()
    a.elector.stop_renewing()  # SIGKILL: a neither renews nor releases
    killed_at = time.monotonic()
    limit = a.config.lease_seconds + a.config.retry_seconds * (1 + JITTER) + 1.0  # + API latency
    wait_for(lambda: bool(won_at), limit, "the standby to take over")
    took = won_at[0] - killed_at
    # b waited a whole lease from the last renewal it saw, which a sent at most one retry before it stopped.
    assert took >= a.config.lease_seconds - a.config.retry_seconds - 0.2, took
    assert b.elector.is_leader and b.elector.transitions == 1
    spec = read_lease(cluster, namespace)
    assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
    assert a.lost_at == []  # a killed process is told nothing


def test_release_hands_the_lease_over_at_once(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    # A long lease: b could not get it within the test's bound unless a released it.
    slow = {"lease_seconds": 30, "renew_deadline_seconds": 20.0, "retry_seconds": 0.5}
    a, b = candidates("replica-a", **slow), candidates("replica-b", **slow)
    assert a.elector.wait_until_leader()
    a.elector.start_renewing()
    won_at = b.wait_in_thread()
    wait_for(lambda: b.elector.holder == "replica-a", 5, "b to see a's lease")

    released_at = time.monotonic()
    assert a.elector.release()
    assert not a.elector.is_leader
    wait_for(lambda: bool(won_at), 3, "b to take the released lease")
    assert won_at[0] - released_at < 3
    spec = read_lease(cluster, namespace)
    assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
    assert spec["leaseDurationSeconds"] == 30
    assert a.lost_at == []  # a release is not a loss
    assert not a.elector.release()  # nothing left to release


def test_a_lease_taken_by_someone_else_calls_on_lost_exactly_once(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    a = candidates("replica-a")
    assert a.elector.wait_until_leader()
    a.elector.start_renewing()
    cluster.kubectl(
        "patch", "lease", "nas-operator", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60}}),
    )  # fmt: skip
    wait_for(lambda: bool(a.lost_at), a.config.retry_seconds + 2, "on_lost")
    assert not a.elector.is_leader
    # Two more renew deadlines: the renew thread has stopped, and the deposed leader never writes again.
    time.sleep(2 * a.config.renew_deadline_seconds)
    assert len(a.lost_at) == 1
    assert a.elector._renewer is not None and not a.elector._renewer.is_alive()
    assert read_lease(cluster, namespace)["holderIdentity"] == "intruder"


def test_a_leader_cut_off_from_the_api_stops_before_a_standby_can_start(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    a, b = candidates("replica-a"), candidates("replica-b")
    assert a.elector.wait_until_leader()
    a.elector.start_renewing()
    won_at = b.wait_in_thread()
    wait_for(lambda: b.elector.holder == "replica-a", 5, "b to see a's lease")
    a.api_client.configuration.host = f"https://127.0.0.1:{free_port()}"  # nothing listens: every call fails
    cut_at = time.monotonic()

    limit = a.config.lease_seconds + a.config.retry_seconds * (1 + JITTER) + 2.0
    wait_for(lambda: bool(won_at), limit, "the standby to take over")
    assert len(a.lost_at) == 1 and a.lost_at[0] < won_at[0], (a.lost_at, won_at)
    assert a.lost_at[0] - cut_at <= a.config.renew_deadline_seconds + 0.5
    assert a.elector.last_error is not None and not a.elector.is_leader
    assert read_lease(cluster, namespace)["holderIdentity"] == "replica-b"
    time.sleep(a.config.retry_seconds * 2)
    assert len(a.lost_at) == 1


def test_the_expiry_is_timed_by_the_local_clock_not_the_holders_timestamps(
    cluster: ControlPlane, namespace: str, candidates: Callable[..., Candidate]
) -> None:
    """A holder whose clock is years behind wrote renewTime in the past; the lease is still live until we have seen
    it unchanged for leaseDurationSeconds ourselves (and a renewTime in the future does not keep it forever)."""
    now = [1000.0]
    for name, stamp in (("past", "2001-01-01T00:00:00.000000Z"), ("future", "2999-01-01T00:00:00.000000Z")):
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 5, "renewTime": stamp, "acquireTime": stamp},
        }
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(lease))
        candidate = candidates("replica-b", lease=name)
        candidate.elector._clock = lambda: now[0]  # the clock the elector would have been built with
        assert not candidate.elector.try_acquire_or_renew()
        now[0] += 4.9
        assert not candidate.elector.try_acquire_or_renew()
        now[0] += 0.2
        assert candidate.elector.try_acquire_or_renew()
        spec = read_lease(cluster, namespace, name)
        assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1


def race(electors: list[LeaderElector]) -> list[bool | None]:
    """Every elector's try_acquire_or_renew() at the same instant, each on its own thread."""
    barrier = threading.Barrier(len(electors))
    results: list[bool | None] = [None] * len(electors)

    def attempt(i: int) -> None:
        barrier.wait()
        results[i] = electors[i].try_acquire_or_renew()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(electors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("start", ["absent", "released"])
def test_two_candidates_racing_never_both_lead(cluster: ControlPlane, namespace: str, start: str) -> None:
    """20 rounds of two candidates trying at the same instant, on a Lease that does not exist yet (the create race)
    or that was just released (the write race): the API server accepts exactly one of them each time."""
    clients = [config.new_client_from_config(str(cluster.kubeconfig)) for _ in range(2)]
    coordination = client.CoordinationV1Api(clients[0])
    for round_ in range(20):
        name = f"race-{round_}"
        if start == "released":
            spec = {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 4}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec}
            coordination.create_namespaced_lease(namespace, body, _request_timeout=10)
        electors = [
            LeaderElector(api, LeaseConfig(name=name, namespace=namespace, identity=f"c{i}", **FAST), lambda: None)
            for i, api in enumerate(clients)
        ]
        results = race(electors)
        assert sorted(results, key=bool) == [False, True], (round_, results, [e.last_error for e in electors])
        winner = results.index(True)
        assert [e.is_leader for e in electors] == [i == winner for i in range(len(electors))]
        lease = coordination.read_namespaced_lease(name, namespace, _request_timeout=10).spec
        assert lease.holder_identity == f"c{winner}"
        assert lease.lease_transitions == (0 if start == "absent" else 5)
        # and the loser stays out: the winner's lease is live
        assert not electors[1 - winner].try_acquire_or_renew() and electors[winner].try_acquire_or_renew()


def test_settings_from_the_environment(tmp_path: Path) -> None:
    assert LeaseConfig.from_env({}) is None
    assert LeaseConfig.from_env({"NAS_LEADER_ELECTION": "false", "NAS_POD_NAME": "p"}) is None
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("ops\n")
    full = LeaseConfig.from_env(
        {
            "NAS_LEADER_ELECTION": "true",
            "NAS_LEADER_LEASE_NAME": "nas-lock",
            "NAS_LEADER_LEASE_NAMESPACE": "operators",
            "NAS_POD_NAME": "nas-operator-7d9c-x2x",
            "NAS_LEASE_SECONDS": "20",
            "NAS_RENEW_DEADLINE_SECONDS": "12.5",
            "NAS_LEASE_RETRY_SECONDS": "1",
        },
        namespace_file,
    )
    assert full == LeaseConfig(
        name="nas-lock",
        namespace="operators",
        identity="nas-operator-7d9c-x2x",
        lease_seconds=20,
        renew_deadline_seconds=12.5,
        retry_seconds=1.0,
    )
    defaults = LeaseConfig.from_env({"NAS_LEADER_ELECTION": "true"}, namespace_file)
    assert defaults is not None and defaults.namespace == "ops" and defaults.name == "nas-operator"
    assert (defaults.lease_seconds, defaults.renew_deadline_seconds, defaults.retry_seconds) == (15, 10.0, 2.0)
    assert "_" in defaults.identity  # host name + random suffix
    other = LeaseConfig.from_env({"NAS_LEADER_ELECTION": "true"}, namespace_file)
    assert other is not None and other.identity != defaults.identity
    pod = LeaseConfig.from_env({"NAS_LEADER_ELECTION": "1", "POD_NAMESPACE": "mine"}, namespace_file)
    assert pod is not None and pod.namespace == "mine"
    nowhere = LeaseConfig.from_env({"NAS_LEADER_ELECTION": "true"}, tmp_path / "absent")
    assert nowhere is not None and nowhere.namespace == "default"

    for env, named in (
        ({"NAS_LEADER_ELECTION": "maybe"}, "NAS_LEADER_ELECTION"),
        ({"NAS_LEADER_ELECTION": "true", "NAS_LEASE_SECONDS": "soon"}, "NAS_LEASE_SECONDS"),
        ({"NAS_LEADER_ELECTION": "true", "NAS_LEASE_SECONDS": "15.5"}, "NAS_LEASE_SECONDS"),
        ({"NAS_LEADER_ELECTION": "true", "NAS_LEASE_RETRY_SECONDS": "-1"}, "NAS_LEASE_RETRY_SECONDS"),
        ({"NAS_LEADER_ELECTION": "true", "NAS_RENEW_DEADLINE_SECONDS": "20"}, "renew_deadline_seconds"),
    ):
        with pytest.raises(ValueError, match=named):
            LeaseConfig.from_env(env, namespace_file)
    with pytest.raises(ValueError, match="identity"):
        LeaseConfig(namespace="ns", identity="")
