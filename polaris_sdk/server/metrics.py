"""The embedded server's own metrics, served at ``/metrics`` in Prometheus text format.

What is counted, under a real polaris-server's names and labels where it has them:

* ``client_rq_total{api, protocol, err_code}`` (counter): requests answered,
  by API (``RegisterInstance``, ``Heartbeat``, ``Discover`` ... for the client
  API; ``GET:/naming/v1/instances`` ... for the admin API, as a real server
  names them), transport (``grpc`` / ``http``) and Polaris code;
* ``instance_count``, ``instance_online_count`` (healthy),
  ``instance_abnormal_count`` (unhealthy), ``instance_isolate_count``
  (gauges, by ``namespace`` and ``service``) and ``service_count`` (by
  ``namespace``), read from the store at each scrape.

Counting needs nothing but this module and is always on (a dictionary
increment under a lock per request); rendering needs the optional
``prometheus_client`` (``pip install polarismesh-sdk[metrics]``):
:meth:`ServerMetrics.render` returns None without it, and ``/metrics``
answers 404 saying so. Each server renders from its own registry, never the
process-global one. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Final

from polaris_sdk.server.auth import AuthFilter, Authorizer
from polaris_sdk.server.naming import NamingService, RequestContext
from polaris_sdk.server.store.base import Store

__all__ = ["METRICS_MISSING", "MeteredAuthFilter", "ServerMetrics"]

METRICS_MISSING: Final = (
    "metrics need the prometheus_client package: pip install 'polarismesh-sdk[metrics]'"
)
_RequestKey = tuple[str, str, int]


class ServerMetrics:
    """Request counts plus the store's instance figures; see the module doc."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._requests: dict[_RequestKey, int] = {}

    def count(self, api: str, protocol: str, code: int) -> None:
        key = (api, protocol, int(code))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def requests(self) -> dict[_RequestKey, int]:
        """A copy of the request counts by (api, protocol, code)."""
        with self._lock:
            return dict(self._requests)

    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return str(CONTENT_TYPE_LATEST)

    def render(self) -> bytes | None:
        """The exposition text, or None when prometheus_client is not installed."""
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return bytes(generate_latest(registry))

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        requests = CounterMetricFamily(
            "client_rq",
            "requests answered, by API, transport and Polaris code",
            labels=["api", "protocol", "err_code"],
        )
        for (api, protocol, code), value in sorted(self.requests().items()):
            requests.add_metric([api, protocol, str(code)], value)
        yield requests
        gauges = {
            name: GaugeMetricFamily(name, text, labels=["namespace", "service"])
            for name, text in (
                ("instance_count", "instances"),
                ("instance_online_count", "healthy instances"),
                ("instance_abnormal_count", "unhealthy instances"),
                ("instance_isolate_count", "isolated instances"),
            )
        }
        services = GaugeMetricFamily("service_count", "services", labels=["namespace"])
        per_namespace: dict[str, int] = {}
        for record in self._store.list_services():
            per_namespace[record.namespace] = per_namespace.get(record.namespace, 0) + 1
            view = self._store.service_instances(record.namespace, record.name)
            instances = view.instances if view is not None else ()
            labels = [record.namespace, record.name]
            gauges["instance_count"].add_metric(labels, len(instances))
            gauges["instance_online_count"].add_metric(
                labels, sum(1 for i in instances if i.healthy)
            )
            gauges["instance_abnormal_count"].add_metric(
                labels, sum(1 for i in instances if not i.healthy)
            )
            gauges["instance_isolate_count"].add_metric(
                labels, sum(1 for i in instances if i.isolate)
            )
        for namespace, count in sorted(per_namespace.items()):
            services.add_metric([namespace], count)
        yield from gauges.values()
        yield services


class _Collector:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.families()


def _code(answer: Any) -> int:
    return int(answer.code.value)


class MeteredAuthFilter(AuthFilter):
    """An :class:`~polaris_sdk.server.auth.AuthFilter` that counts each answer it gives.

    One per transport, so the count knows whether a request came over gRPC or HTTP.
    """

    def __init__(
        self,
        naming: NamingService,
        authorizer: Authorizer | None,
        metrics: ServerMetrics,
        protocol: str,
    ) -> None:
        super().__init__(naming, authorizer)
        self.metrics = metrics
        self.protocol = protocol

    def _counted(self, api: str, answer: Any) -> Any:
        self.metrics.count(api, self.protocol, _code(answer))
        return answer

    def register_instance(self, instance: Any, ctx: RequestContext) -> Any:
        return self._counted("RegisterInstance", super().register_instance(instance, ctx))

    def deregister_instance(self, instance: Any, ctx: RequestContext) -> Any:
        return self._counted("DeregisterInstance", super().deregister_instance(instance, ctx))

    def heartbeat(self, instance: Any, ctx: RequestContext) -> Any:
        return self._counted("Heartbeat", super().heartbeat(instance, ctx))

    def discover(self, request: Any, ctx: RequestContext, *, only_healthy: bool = False) -> Any:
        return self._counted("Discover", super().discover(request, ctx, only_healthy=only_healthy))

    def report_client(self, client: Any, ctx: RequestContext) -> Any:
        return self._counted("ReportClient", super().report_client(client, ctx))
