"""Operator-wide gauges read at scrape time: the fit pool's queue, API requests per minute, engines, the cache.

Read when Prometheus scrapes, from the objects that hold them, so the values are never stale and nothing has to
remember to update them (and a scrape never waits on a step: each source takes only its own short lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily

from nas_operator.cluster.api_requests import RequestCounter
from nas_operator.search.fit_pool import FitPool


class _Controller(Protocol):
    @property
    def loop(self) -> Any: ...


class _Objects(Protocol):
    def size(self) -> tuple[int, int]: ...


def live_metrics(
    pool: FitPool,
    requests: RequestCounter,
    controllers: Mapping[tuple[str, str], _Controller],
    objects: Callable[[], _Objects | None],
) -> Callable[[], Iterable[GaugeMetricFamily]]:
    namespaces: set[str] = set()  # every namespace that used the pool: its 0 is a value, not "no data"

    def collect() -> Iterable[GaugeMetricFamily]:
        stats = pool.stats()
        namespaces.update(stats.waiting_per_namespace, stats.running_per_namespace)
        yield GaugeMetricFamily("nas_fit_slots", "Model fits the operator runs at once", value=stats.slots)
        yield GaugeMetricFamily("nas_fit_running", "Model fits running now", value=stats.running)
        waiting = GaugeMetricFamily(
            "nas_fit_waiting", "Requests for candidates waiting for a fit slot, by namespace", labels=["namespace"]
        )
        for namespace in sorted(namespaces):
            waiting.add_metric([namespace], stats.waiting_per_namespace.get(namespace, 0))
        yield waiting
        per_minute = GaugeMetricFamily(
            "nas_api_requests_per_minute",
            "Kubernetes API requests made for an experiment over the last minute ('' experiment: the operator's own)",
            labels=["namespace", "experiment"],
        )
        for (namespace, experiment), count in sorted(requests.per_minute_all().items()):
            per_minute.add_metric([namespace, experiment], count)
        yield per_minute
        loaded = sum(1 for controller in list(controllers.values()) if controller.loop is not None)
        yield GaugeMetricFamily(
            "nas_engines_loaded",
            "Experiments whose engine and trial table the operator holds in memory (finished and idle ones: none)",
            value=loaded,
        )
        cache = objects()
        cached = GaugeMetricFamily(
            "nas_watch_cached_objects", "Trial Jobs and Pods held by the operator's watch cache", labels=["kind"]
        )
        jobs, pods = cache.size() if cache is not None else (0, 0)
        cached.add_metric(["jobs"], jobs)
        cached.add_metric(["pods"], pods)
        yield cached

    return collect
