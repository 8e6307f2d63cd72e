"""Prometheus metrics of the operator: what a platform team graphs and alerts on.

Names follow Prometheus conventions (`nas_` prefix, base units, `_total` for counters).
The controller reports into one `Telemetry` after every reconcile step; series of a
deleted experiment are removed so that a dashboard never shows ghosts. The registry is
our own (not the client's global one) so that tests can build as many as they like.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nas_operator.cluster.api_requests import RequestCounter
from nas_operator.resource.spec import NASExperimentStatus

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Stopped")
TRIAL_STATES = ("pending", "running", "succeeded", "failed", "stopped", "early_stopped")
FULL_TRAINING_STATES = ("pending", "running", "succeeded", "failed")
TRIAL_OUTCOMES = ("succeeded", "failed", "stopped", "early_stopped")
# Trainings take minutes to hours; generation from sub-second (Sobol) to minutes (qNEHVI, many observations).
TRIAL_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FIT_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)

Key = tuple[str, str]  # (namespace, experiment)


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._phases: dict[Key, str] = {}
        self._taus: set[tuple[str, str, str]] = set()  # (namespace, experiment, metric) series to drop on forget
        self._requests: set[tuple[str, str, str, str]] = set()  # (namespace, experiment, verb, resource) series
        self.requests = RequestCounter()
        labels = ("namespace", "experiment")
        self.experiments = Gauge(
            "nas_experiments", "NASExperiments this operator reconciles, by phase", ("phase",), registry=self.registry
        )
        self.trials = Gauge(
            "nas_trials", "Trials of an experiment by state", (*labels, "state"), registry=self.registry
        )
        self.trial_duration = Histogram(
            "nas_trial_duration_seconds",
            "Wall time of finished trials, from start to end",
            (*labels, "outcome"),
            buckets=TRIAL_BUCKETS,
            registry=self.registry,
        )
        self.generation = Histogram(
            "nas_candidate_generation_seconds",
            "Time the engine took to produce one batch of candidates (model fit and acquisition)",
            labels,
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.hypervolume = Gauge(
            "nas_hypervolume",
            "Hypervolume of the observed Pareto front above the objective thresholds",
            labels,
            registry=self.registry,
        )
        self.seconds_saved = Gauge(
            "nas_training_seconds_saved",
            "Training time early stopping is estimated to have saved (stopped trials' time scaled to a full run)",
            labels,
            registry=self.registry,
        )
        self.pareto_size = Gauge(
            "nas_pareto_front_size", "Trials on the observed Pareto front", labels, registry=self.registry
        )
        self.best_value = Gauge(
            "nas_best_value", "One objective: the best feasible trial's value", labels, registry=self.registry
        )
        self.full_trials = Gauge(
            "nas_full_training_trials",
            "Stage 2 (spec.fullTraining): candidates trained in full, by state",
            (*labels, "state"),
            registry=self.registry,
        )
        self.full_hypervolume = Gauge(
            "nas_full_training_hypervolume",
            "Hypervolume of the front on full-training metrics",
            labels,
            registry=self.registry,
        )
        self.rank_correlation = Gauge(
            "nas_proxy_rank_correlation",
            "Kendall's tau between the search's (proxy) and the full trainings' values of each objective",
            (*labels, "metric"),
            registry=self.registry,
        )
        self.warm_start_trials = Gauge(
            "nas_warm_start_trials",
            "Earlier experiments' trials the model started from (spec.warmStart)",
            labels,
            registry=self.registry,
        )
        self.state_bytes = Gauge(
            "nas_state_bytes", "Size of the stored experiment state (gzip)", labels, registry=self.registry
        )
        self.reconcile_errors = Counter(
            "nas_reconcile_errors", "Reconcile steps that raised an error", labels, registry=self.registry
        )
        self.reconcile_duration = Histogram(
            "nas_reconcile_duration_seconds",
            "Time of one reconcile step (model fitting runs in the background, not here)",
            labels,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.fit_wait = Histogram(
            "nas_fit_wait_seconds",
            "Time a request for candidates waited for a slot of the operator's model-fit pool",
            ("namespace",),
            buckets=FIT_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.api_requests = Counter(
            "nas_api_requests",
            "Kubernetes API requests the operator made, by the experiment whose step made them ('' for the "
            "operator's own: watches, leader election)",
            (*labels, "verb", "resource"),
            registry=self.registry,
        )
        self.leader = Gauge(
            "nas_operator_leader",
            "1 while this replica is the active operator, 0 while it stands by",
            registry=self.registry,
        )
        self.live = _LiveCollector()
        self.registry.register(self.live)
        for phase in PHASES:  # a zero is a value: dashboards show 0, not "no data"
            self.experiments.labels(phase=phase).set(0)

    def observe_status(self, namespace: str, name: str, status: NASExperimentStatus, state_bytes: int) -> None:
        labels = {"namespace": namespace, "experiment": name}
        counts = status.trials
        for state, value in zip(
            TRIAL_STATES,
            (counts.pending, counts.running, counts.succeeded, counts.failed, counts.stopped, counts.early_stopped),
            strict=True,
        ):
            self.trials.labels(**labels, state=state).set(value)
        if status.hypervolume is not None:
            self.hypervolume.labels(**labels).set(status.hypervolume)
        if status.training_seconds_saved is not None:
            self.seconds_saved.labels(**labels).set(status.training_seconds_saved)
        self.pareto_size.labels(**labels).set(status.pareto_size or 0)
        if status.best_value is not None:
            self.best_value.labels(**labels).set(status.best_value)
        if status.warm_start_trials is not None:
            self.warm_start_trials.labels(**labels).set(status.warm_start_trials)
        full = status.full_training
        if full is not None:
            for state, value in zip(
                FULL_TRAINING_STATES, (full.pending, full.running, full.succeeded, full.failed), strict=True
            ):
                self.full_trials.labels(**labels, state=state).set(value)
            if full.hypervolume is not None:
                self.full_hypervolume.labels(**labels).set(full.hypervolume)
            for metric, tau in full.rank_correlation.items():
                self.rank_correlation.labels(**labels, metric=metric).set(tau)
                with self._lock:
                    self._taus.add((namespace, name, metric))
        if state_bytes:
            self.state_bytes.labels(**labels).set(state_bytes)
        self.set_phase(namespace, name, status.phase)

    def set_phase(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase
            self._publish_phases()

    def observe_trial(self, namespace: str, name: str, outcome: str, seconds: float) -> None:
        self.trial_duration.labels(namespace=namespace, experiment=name, outcome=outcome).observe(seconds)

    def observe_generation(self, namespace: str, name: str, seconds: float) -> None:
        self.generation.labels(namespace=namespace, experiment=name).observe(seconds)

    def observe_step(self, namespace: str, name: str, seconds: float) -> None:
        self.reconcile_duration.labels(namespace=namespace, experiment=name).observe(seconds)

    def count_error(self, namespace: str, name: str) -> None:
        self.reconcile_errors.labels(namespace=namespace, experiment=name).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted experiment."""
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._publish_phases()
            objectives = [key[2] for key in self._taus if key[:2] == (namespace, name)]
            self._taus -= {(namespace, name, objective) for objective in objectives}
            self.requests.forget(namespace, name)
            requests = [key for key in self._requests if key[:2] == (namespace, name)]
            self._requests -= set(requests)
        for key in requests:
            with contextlib.suppress(KeyError):
                self.api_requests.remove(*key)
        for objective in objectives:
            with contextlib.suppress(KeyError):
                self.rank_correlation.remove(namespace, name, objective)
        for metric, extra in self._labelled():
            for value in extra:
                with contextlib.suppress(KeyError):  # never observed: nothing to remove
                    metric.remove(namespace, name, *value)

    def _labelled(self) -> Iterable[tuple[Gauge | Counter | Histogram, list[tuple[str, ...]]]]:
        yield self.trials, [(state,) for state in TRIAL_STATES]
        yield self.trial_duration, [(outcome,) for outcome in TRIAL_OUTCOMES]
        yield self.full_trials, [(state,) for state in FULL_TRAINING_STATES]
        for metric in (
            self.generation,
            self.hypervolume,
            self.seconds_saved,
            self.pareto_size,
            self.best_value,
            self.full_hypervolume,
            self.warm_start_trials,
            self.state_bytes,
            self.reconcile_errors,
            self.reconcile_duration,
        ):
            yield metric, [()]

    def _publish_phases(self) -> None:
        for phase in PHASES:
            self.experiments.labels(phase=phase).set(sum(1 for p in self._phases.values() if p == phase))

    def count_request(self, verb: str, resource: str, namespace: str, experiment: str) -> None:
        """One Kubernetes API request of ours (the rate-limited client's callback): a counter, and the last minute."""
        self.requests.record(verb, resource, namespace, experiment)
        self.api_requests.labels(namespace=namespace, experiment=experiment, verb=verb, resource=resource).inc()
        if experiment:
            with self._lock:
                self._requests.add((namespace, experiment, verb, resource))

    def serve(self, port: int, address: str, health: Callable[[], tuple[bool, str]] | None = None) -> None:
        """Serve /metrics, and /healthz from `health`, on daemon threads.

        The operator's own endpoint, not Kopf's: Kopf starts its liveness endpoint only once its startup handlers
        are done, and a standby replica waits in one for the leader's Lease, so it needs a probe that answers while
        it waits. `health` checks the event loop's heartbeat (it never waits on a model fit or an API call).
        """
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/healthz":
                    ok, text = health() if health is not None else (True, "ok")
                    self._send(200 if ok else 503, "text/plain; charset=utf-8", text.encode())
                else:
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="nas-metrics", daemon=True).start()


class _LiveCollector(Collector):
    """Values read at scrape time from the objects that hold them (the fit pool, the request counter, the cache)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[GaugeMetricFamily]]] = []

    def add(self, source: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self.sources.append(source)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for source in list(self.sources):
            yield from source()
