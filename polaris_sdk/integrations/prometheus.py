"""Prometheus metrics of an SDK context, under polaris-go's names (extra ``metrics``).

``PolarisMetrics(ctx)`` watches an :class:`~polaris_sdk.SDKContext` or an
:class:`~polaris_sdk.AsyncSDKContext` (build it on the context's loop) through
public seams only: ``ctx.add_observer`` (call results, heartbeats, cache
rounds), ``add_circuit_breaker_listener`` of a consumer facade over the same
context, and ``ctx.state``. ``registry=None`` gives it a registry of its own;
pass ``prometheus_client.REGISTRY`` to join the process-wide one.
:meth:`PolarisMetrics.start_http_server` serves the registry over HTTP.

polaris-go's statistics (its ``plugin/metrics/prometheus`` reporter), with
its names, label sets and semantics, so dashboards made for it work:

* ``upstream_rq_total``, ``upstream_rq_success``, ``upstream_rq_timeout``
  (average delay, ms) and ``upstream_rq_max_timeout`` (ms): gauges holding
  the figures of the last whole period of ``interval`` seconds (polaris-go's
  default: 60). A series with no call in the last period reads 0 for two
  periods, then goes away. Labels: ``callee_namespace``, ``callee_service``,
  ``callee_subset``, ``callee_method``, ``callee_instance`` (``host:port``),
  ``callee_result_code``, ``callee_result``, ``caller_labels``,
  ``caller_namespace``, ``caller_service``, ``caller_ip``, ``metric_name``
  (the metric's own name), ``rule_name``; a missing value is ``__NULL__``.
* ``circuitbreaker_open``, ``circuitbreaker_halfopen``: gauges, 1 while
  the breaker is in that state, else 0; kept for good. Labels:
  ``callee_namespace``, ``callee_service``, ``callee_method``,
  ``callee_subset``, ``callee_instance``, ``caller_namespace``,
  ``caller_service``, ``caller_ip``, ``metric_name``, ``rule_name``.
* ``upstream_rq_delay``: a name polaris-go reserves without exporting; here a
  cumulative histogram of call delays in milliseconds, with the call labels
  above but ``metric_name``.

The SDK's own health (``polaris_sdk_`` names):

* ``polaris_sdk_connection_state{state}``: 1 for the context's current state
  (``connected``, ``suspended``, ``lost``), 0 for the others;
* ``polaris_sdk_heartbeat_lateness_seconds{namespace, service, instance}``:
  histogram of how late each heartbeat was sent after its due time;
* ``polaris_sdk_heartbeat_failures_total{namespace, service, instance}``;
* ``polaris_sdk_revision_checks_total{namespace, service, result}``: Discover
  rounds of the consumer cache, ``result`` ``changed``, ``unchanged`` or
  ``error``;
* ``polaris_sdk_cache_age_seconds{namespace, service}``: seconds since the
  server last confirmed the cached snapshot, computed at each scrape.

Recording is a dictionary update under a lock, in the thread (or on the loop)
doing the work; rendering happens on the scraper's thread. ``close()``
detaches everything, stops the HTTP server and its thread, and unregisters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncSDKContext,
    CircuitBreakerEvent,
    ClosedError,
    ConsumerAPI,
    SDKContext,
    ServiceCallResult,
    ServiceInstances,
    ServiceKey,
    ValidationError,
)
from polaris_sdk.validation import INVALID_PARAMETER

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from polaris_sdk.provider.core import RegistrationStatus

__all__ = [
    "CALL_LABELS",
    "CIRCUIT_BREAKER_LABELS",
    "DELAY_BUCKETS_MS",
    "HTTP_THREAD",
    "LATENESS_BUCKETS",
    "PolarisMetrics",
]

HTTP_THREAD: Final = "polaris-metrics-http"
NULL: Final = "__NULL__"
"""polaris-go's value for a label it has nothing for."""

CALL_LABELS: Final = (
    "callee_namespace",
    "callee_service",
    "callee_subset",
    "callee_method",
    "callee_instance",
    "callee_result_code",
    "callee_result",
    "caller_labels",
    "caller_namespace",
    "caller_service",
    "caller_ip",
    "metric_name",
    "rule_name",
)
"""polaris-go's ``ServiceCallLabelOrder``."""

CIRCUIT_BREAKER_LABELS: Final = (
    "callee_namespace",
    "callee_service",
    "callee_method",
    "callee_subset",
    "callee_instance",
    "caller_namespace",
    "caller_service",
    "caller_ip",
    "metric_name",
    "rule_name",
)
"""polaris-go's ``CircuitBreakerLabelOrder``."""

DELAY_BUCKETS_MS: Final = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
LATENESS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_CALL_GAUGES: Final = (
    ("upstream_rq_total", "total of request per period"),
    ("upstream_rq_success", "total of success request per period"),
    ("upstream_rq_timeout", "average request delay (ms) per period"),
    ("upstream_rq_max_timeout", "maximum request delay (ms) per period"),
)
_BREAKER_GAUGES: Final = (
    ("circuitbreaker_open", "open", "total of opened circuit breaker"),
    ("circuitbreaker_halfopen", "half_open", "total of half-open circuit breaker"),
)
_ZEROED_PERIODS: Final = 2
"""Periods a silent call series reads 0 before it goes (polaris-go's RevisionMaxScope)."""

_Labels = tuple[str, ...]


@dataclass(slots=True)
class _Period:
    total: int = 0
    success: int = 0
    delay_sum: float = 0.0
    delays: int = 0
    delay_max: float = 0.0

    def values(self) -> tuple[float, float, float, float]:
        average = self.delay_sum / self.delays if self.delays else 0.0
        return float(self.total), float(self.success), average, self.delay_max


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class PolarisMetrics:
    """The metrics of one context; see the module docstring."""

    def __init__(
        self,
        ctx: SDKContext | AsyncSDKContext,
        registry: CollectorRegistry | None = None,
        *,
        interval: float = 60.0,
        caller_ip: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(ctx, SDKContext | AsyncSDKContext):
            raise ValidationError(
                "ctx", "must be an SDKContext or an AsyncSDKContext", INVALID_PARAMETER
            )
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValidationError(
                "interval", "must be a number of seconds above 0", INVALID_PARAMETER
            )
        if not isinstance(caller_ip, str):
            raise ValidationError("caller_ip", "must be a str", INVALID_PARAMETER)
        from prometheus_client import CollectorRegistry

        self._ctx = ctx
        self._interval = float(interval)
        self._caller_ip = caller_ip
        self._clock = clock
        self._epoch = clock()
        self._lock = threading.Lock()
        self._calls: dict[_Labels, dict[int, _Period]] = {}
        self._delays: dict[_Labels, _Histogram] = {}
        self._breakers: dict[_Labels, str] = {}
        self._lateness: dict[_Labels, _Histogram] = {}
        self._beat_failures: dict[_Labels, int] = {}
        self._checks: dict[_Labels, int] = {}
        self._snapshots: dict[ServiceKey, ServiceInstances] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.registry: CollectorRegistry = (
            registry if registry is not None else CollectorRegistry(auto_describe=True)
        )
        self._consumer: ConsumerAPI | AsyncConsumerAPI = (
            AsyncConsumerAPI(ctx) if isinstance(ctx, AsyncSDKContext) else ConsumerAPI(ctx)
        )
        self._consumer.add_circuit_breaker_listener(self._breaker_changed)
        ctx.add_observer(self)
        self.registry.register(self)

    # ------------------------------------------------------------- serving

    def start_http_server(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve the registry at ``http://addr:port/metrics`` on a thread of its own
        until :meth:`close`; returns the port (useful with ``port=0``)."""
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValidationError("port", "must be an int from 0 to 65535", INVALID_PARAMETER)
        if not isinstance(addr, str) or not addr:
            raise ValidationError("addr", "must be a non-empty str", INVALID_PARAMETER)
        from prometheus_client import start_http_server

        with self._lock:
            if self._closed:
                raise ClosedError("these PolarisMetrics are closed")
            if self._server is not None:
                raise ValidationError(
                    "port", "a server is already running; close() first", INVALID_PARAMETER
                )
            self._server, self._thread = start_http_server(port, addr, registry=self.registry)
            self._thread.name = HTTP_THREAD
            return int(self._server.server_port)

    def close(self) -> None:
        """Detach from the context, stop the HTTP server, unregister; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, thread = self._server, self._thread
            self._server = self._thread = None
        self._ctx.remove_observer(self)
        self._consumer.remove_circuit_breaker_listener(self._breaker_changed)
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()
        self.registry.unregister(self)

    def __enter__(self) -> PolarisMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------- observer methods

    def call_result(self, result: ServiceCallResult) -> None:
        instance = result.instance
        labels = (
            result.namespace,
            result.service,
            instance.logic_set if instance is not None else "",
            result.method,
            f"{result.host}:{result.port}",
            NULL if result.ret_code is None else str(result.ret_code),
            result.ret_status or NULL,
            "",
            result.caller_namespace or NULL,
            result.caller_service or NULL,
            self._caller_ip,
            NULL,
        )
        delay = None if result.delay is None else result.delay * 1000.0
        period = self._period()
        with self._lock:
            periods = self._calls.setdefault(labels, {})
            now = periods.get(period)
            if now is None:
                now = periods[period] = _Period()
                for old in sorted(periods)[:-2]:  # the current one and the last one shown
                    del periods[old]
            now.total += 1
            now.success += result.ret_status == "success"
            if delay is not None:
                now.delay_sum += delay
                now.delays += 1
                now.delay_max = max(now.delay_max, delay)
                self._delays.setdefault(labels, _Histogram(DELAY_BUCKETS_MS)).observe(delay)

    def heartbeat(self, status: RegistrationStatus, lateness: float, ok: bool) -> None:
        labels = (status.namespace, status.service, f"{status.host}:{status.port}")
        with self._lock:
            self._lateness.setdefault(labels, _Histogram(LATENESS_BUCKETS)).observe(
                max(0.0, lateness)
            )
            if not ok:
                self._beat_failures[labels] = self._beat_failures.get(labels, 0) + 1

    def revision_check(
        self, key: ServiceKey, changed: bool, ok: bool, snapshot: ServiceInstances | None
    ) -> None:
        result = ("changed" if changed else "unchanged") if ok else "error"
        labels = (key.namespace, key.service, result)
        with self._lock:
            self._checks[labels] = self._checks.get(labels, 0) + 1
            if snapshot is not None:
                self._snapshots[key] = snapshot

    def _breaker_changed(self, event: CircuitBreakerEvent) -> None:
        labels = (
            event.namespace,
            event.service,
            event.resource if event.level == "method" else "",
            "",
            event.resource if event.level == "instance" else "",
            "",
            "",
            self._caller_ip,
            event.rule,
        )
        with self._lock:
            self._breakers[labels] = event.new_state

    # ----------------------------------------------------------- collector

    def _period(self) -> int:
        return int((self._clock() - self._epoch) // self._interval)

    def describe(self) -> list[Any]:
        return []  # families depend on what was seen; collected at each scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        with self._lock:
            calls = self._shown_calls()
            delays = {k: (h.buckets(), h.total) for k, h in self._delays.items()}
            breakers = dict(self._breakers)
            lateness = {k: (h.buckets(), h.total) for k, h in self._lateness.items()}
            failures = {k: (n,) for k, n in self._beat_failures.items()}
            checks = {k: (n,) for k, n in self._checks.items()}
            snapshots = dict(self._snapshots)

        for index, (name, doc) in enumerate(_CALL_GAUGES):
            gauge = GaugeMetricFamily(name, doc, labels=CALL_LABELS)
            for labels, values in calls.items():
                gauge.add_metric(_named(labels, name), values[index])
            yield gauge
        call_labels = tuple(n for n in CALL_LABELS if n != "metric_name")
        yield _family(
            HistogramMetricFamily, "upstream_rq_delay", "request delay (ms)", call_labels, delays
        )
        for name, state, doc in _BREAKER_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=CIRCUIT_BREAKER_LABELS)
            for labels, current in breakers.items():
                gauge.add_metric(_named(labels, name), 1.0 if current == state else 0.0)
            yield gauge

        gauge = GaugeMetricFamily(
            "polaris_sdk_connection_state",
            "1 for the context's connection state, 0 for the others",
            labels=("state",),
        )
        current_state = self._ctx.state
        for known in type(current_state):
            gauge.add_metric([known.value.lower()], 1.0 if known is current_state else 0.0)
        yield gauge
        beat_labels = ("namespace", "service", "instance")
        yield _family(
            HistogramMetricFamily,
            "polaris_sdk_heartbeat_lateness_seconds",
            "seconds each heartbeat was sent after its due time",
            beat_labels,
            lateness,
        )
        yield _family(
            CounterMetricFamily,
            "polaris_sdk_heartbeat_failures",
            "heartbeats that failed",
            beat_labels,
            failures,
        )
        yield _family(
            CounterMetricFamily,
            "polaris_sdk_revision_checks",
            "Discover rounds of the consumer cache, by result",
            ("namespace", "service", "result"),
            checks,
        )
        gauge = GaugeMetricFamily(
            "polaris_sdk_cache_age_seconds",
            "seconds since the server last confirmed the cached snapshot",
            labels=("namespace", "service"),
        )
        wall = time.time()
        for key, snapshot in snapshots.items():
            gauge.add_metric([key.namespace, key.service], max(0.0, wall - snapshot.updated_at))
        yield gauge

    def _shown_calls(self) -> dict[_Labels, tuple[float, float, float, float]]:
        """What polaris-go's gauges hold now: the last whole period's figures, 0
        for a series silent for up to two periods; forgets older ones. Under the lock."""
        current = self._period()
        shown: dict[_Labels, tuple[float, float, float, float]] = {}
        for labels, periods in list(self._calls.items()):
            past = [p for p in periods if p < current]
            if not past:
                continue  # first seen this period: appears when it ends
            last = max(past)
            if last == current - 1:
                shown[labels] = periods[last].values()
            elif last >= current - 1 - _ZEROED_PERIODS:
                shown[labels] = (0.0, 0.0, 0.0, 0.0)
            elif current not in periods:
                del self._calls[labels]
        return shown


def _family(kind: Any, name: str, doc: str, labels: _Labels, rows: dict[_Labels, Any]) -> Any:
    """A counter or histogram family with one sample per label values; each row
    is the rest of ``add_metric``'s arguments (a count, or buckets and a sum)."""
    family = kind(name, doc, labels=labels)
    for values, row in rows.items():
        family.add_metric(list(values), *row)
    return family


def _named(labels: _Labels, name: str) -> list[str]:
    """The label values with ``metric_name`` (second to last) filled in."""
    return [*labels[:-1], name, labels[-1]]
