"""PolarisMetrics served over HTTP and scraped, after real calls against the embedded server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    ConsumerAPI,
    Instance,
    Observer,
    ProviderAPI,
    SDKContext,
    ServiceKey,
    ValidationError,
)
from polaris_sdk.integrations.prometheus import (
    CALL_LABELS,
    CIRCUIT_BREAKER_LABELS,
    PolarisMetrics,
)
from polaris_sdk.server import PolarisServer
from tests.frontends import LoopThread
from tests.support import FakeClock, wait_until

INTERVAL = 60.0
SERVICE = "metered"
HOST = "127.0.0.1"


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0) as running:
        yield running


def scrape(port: int) -> list[Any]:
    answer = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5.0)
    assert answer.status_code == 200
    return [s for f in text_string_to_metric_families(answer.text) for s in f.samples]


def value(samples: list[Any], name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None if there is none."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, found
    return found[0].value if found else None


def labels_of(samples: list[Any], name: str) -> set[tuple[str, ...]]:
    return {tuple(sorted(s.labels)) for s in samples if s.name == name}


def report_calls(report: Any, instance: Instance) -> None:
    """Three successes (10, 20, 30 ms), one failure (500, 200 ms); then one
    unreachable result, which opens the instance's breaker at once."""
    for delay in (0.010, 0.020, 0.030):
        report(instance=instance, ret_code=200, delay=delay, method="/hello")
    report(instance=instance, ret_status="fail", ret_code=500, delay=0.2, method="/hello")
    report(instance=instance, ret_status="unreachable", method="/other")


def assert_call_figures(port: int, clock: FakeClock, instance: Instance) -> None:
    # polaris-go's gauges hold whole periods: nothing before the first ends.
    assert value(scrape(port), "upstream_rq_total", callee_service=SERVICE) is None
    clock.advance(INTERVAL)
    samples = scrape(port)
    ok = {
        "callee_namespace": "default",
        "callee_service": SERVICE,
        "callee_instance": f"{instance.host}:{instance.port}",
        "callee_method": "/hello",
        "callee_result_code": "200",
        "callee_result": "success",
        "caller_namespace": "__NULL__",
        "caller_service": "__NULL__",
        "rule_name": "__NULL__",
    }
    assert value(samples, "upstream_rq_total", **ok, metric_name="upstream_rq_total") == 3
    assert value(samples, "upstream_rq_success", **ok) == 3
    assert value(samples, "upstream_rq_timeout", **ok) == pytest.approx(20.0)
    assert value(samples, "upstream_rq_max_timeout", **ok) == pytest.approx(30.0)
    failed = {**ok, "callee_result_code": "500", "callee_result": "fail"}
    assert value(samples, "upstream_rq_total", **failed) == 1
    assert value(samples, "upstream_rq_success", **failed) == 0
    assert value(samples, "upstream_rq_max_timeout", **failed) == pytest.approx(200.0)
    unreachable = {"callee_method": "/other", "callee_result_code": "__NULL__"}
    assert value(samples, "upstream_rq_total", **unreachable) == 1
    assert labels_of(samples, "upstream_rq_total") == {tuple(sorted(CALL_LABELS))}
    # The delay histogram is cumulative, in milliseconds.
    assert value(samples, "upstream_rq_delay_count", **ok) == 3
    assert value(samples, "upstream_rq_delay_bucket", **ok, le="25.0") == 2
    assert value(samples, "upstream_rq_delay_sum", **ok) == pytest.approx(60.0)
    # A silent series reads 0 for two periods, then goes away.
    for _ in range(2):
        clock.advance(INTERVAL)
        assert value(scrape(port), "upstream_rq_total", **ok) == 0
    clock.advance(INTERVAL)
    assert value(scrape(port), "upstream_rq_total", **ok) is None
    assert value(scrape(port), "upstream_rq_delay_count", **ok) == 3


def assert_breaker_open(port: int, instance: Instance) -> None:
    where = {"callee_service": SERVICE, "callee_instance": f"{instance.host}:{instance.port}"}

    def opened() -> list[Any] | None:
        samples = scrape(port)
        return samples if value(samples, "circuitbreaker_open", **where) == 1 else None

    samples = wait_until(opened, message="circuitbreaker_open never showed the breaker")
    assert value(samples, "circuitbreaker_halfopen", **where) == 0
    assert value(samples, "circuitbreaker_open", **where, metric_name="circuitbreaker_open")
    assert labels_of(samples, "circuitbreaker_open") == {tuple(sorted(CIRCUIT_BREAKER_LABELS))}


def assert_health(port: int, instance_port: int) -> None:
    def checked() -> list[Any] | None:
        samples = scrape(port)
        where = {"namespace": "default", "service": SERVICE}
        changed = value(samples, "polaris_sdk_revision_checks_total", **where, result="changed")
        same = value(samples, "polaris_sdk_revision_checks_total", **where, result="unchanged")
        return samples if changed and same else None

    samples = wait_until(checked, message="no revision check was counted")
    age = value(samples, "polaris_sdk_cache_age_seconds", namespace="default", service=SERVICE)
    assert age is not None and 0 <= age < 30
    assert value(samples, "polaris_sdk_connection_state", state="connected") == 1
    assert value(samples, "polaris_sdk_connection_state", state="lost") == 0

    instance = f"{HOST}:{instance_port}"

    def beaten() -> list[Any] | None:
        samples = scrape(port)
        where = {"service": SERVICE, "instance": instance}
        count = value(samples, "polaris_sdk_heartbeat_lateness_seconds_count", **where)
        failures = value(samples, "polaris_sdk_heartbeat_failures_total", **where)
        return samples if count and count >= 2 and failures else None

    wait_until(beaten, timeout=30, message="heartbeats (and a failed one) were not counted")


def delete_on_server(server: PolarisServer, port: int) -> None:
    """Remove the instance behind the SDK's back: its next heartbeat fails."""
    with ProviderAPI.create(addresses=[server.grpc_address]) as other:
        other.deregister(service=SERVICE, host=HOST, port=port)


def exercise(
    server: PolarisServer, port: int, clock: FakeClock, instance: Instance, report: Any
) -> None:
    """Calls, a breaker opening, heartbeats (one failing), cache rounds: all scraped."""
    report_calls(report, instance)
    assert_breaker_open(port, instance)
    assert_call_figures(port, clock, instance)
    wait_until(lambda: value(scrape(port), "polaris_sdk_heartbeat_lateness_seconds_count"))
    delete_on_server(server, instance.port)
    assert_health(port, instance.port)


def test_sync_context_scraped_over_http(server: PolarisServer) -> None:
    clock = FakeClock()
    with SDKContext.create(addresses=[server.grpc_address], refresh_interval=0.2) as ctx:
        metrics = PolarisMetrics(ctx, interval=INTERVAL, clock=clock)
        try:
            port = metrics.start_http_server(0, HOST)
            provider, consumer = ProviderAPI(ctx), ConsumerAPI(ctx)
            provider.register_instance(service=SERVICE, host=HOST, port=9101, ttl=1)
            consumer.watch_service(service=SERVICE, listeners=[lambda event: None])
            instance = consumer.get_one_instance(service=SERVICE)
            exercise(server, port, clock, instance, consumer.update_service_call_result)
        finally:
            metrics.close()


def test_async_context_scraped_over_http(
    server: PolarisServer, event_loop_thread: LoopThread
) -> None:
    loop = event_loop_thread
    clock = FakeClock()

    async def build() -> tuple[AsyncSDKContext, PolarisMetrics]:
        ctx = AsyncSDKContext.create(addresses=[server.grpc_address], refresh_interval=0.2)
        return ctx, PolarisMetrics(ctx, interval=INTERVAL, clock=clock)

    ctx, metrics = loop.run(build())
    try:
        port = metrics.start_http_server(0, HOST)
        provider, consumer = loop.call(lambda: (AsyncProviderAPI(ctx), AsyncConsumerAPI(ctx)))
        loop.run(provider.register_instance(service=SERVICE, host=HOST, port=9102, ttl=1))
        instance = loop.run(consumer.get_one_instance(service=SERVICE))

        def report(**fields: Any) -> None:
            loop.run(consumer.update_service_call_result(**fields))

        exercise(server, port, clock, instance, report)
    finally:
        loop.call(metrics.close)
        loop.run(ctx.aclose())


def test_the_default_registry_and_a_closed_server(server: PolarisServer) -> None:
    from prometheus_client import REGISTRY, generate_latest

    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        with PolarisMetrics(ctx, registry=REGISTRY) as metrics:
            port = metrics.start_http_server(0, HOST)
            assert b"polaris_sdk_connection_state" in generate_latest(REGISTRY)
            with pytest.raises(ValidationError, match="port"):
                metrics.start_http_server(0, HOST)
        assert b"polaris_sdk_connection_state" not in generate_latest(REGISTRY)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{HOST}:{port}/metrics", timeout=2.0)
        metrics.close()  # idempotent


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": "60"}, "interval"),
        ({"caller_ip": 1}, "caller_ip"),
    ],
)
def test_bad_settings_are_named(server: PolarisServer, kwargs: Any, field: str) -> None:
    with (
        SDKContext.create(addresses=[server.grpc_address]) as ctx,
        pytest.raises(ValidationError, match=field),
    ):
        PolarisMetrics(ctx, **kwargs)
    with pytest.raises(ValidationError, match="ctx"):
        PolarisMetrics(object())  # type: ignore[arg-type]


def test_observers_are_checked_and_contained(
    server: PolarisServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ServiceKey] = []

    class Failing(Observer):
        def revision_check(self, key: ServiceKey, *rest: Any) -> None:
            raise RuntimeError("observer bug")

    class Recording:
        def revision_check(self, key: ServiceKey, *rest: Any) -> None:
            seen.append(key)

    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        with pytest.raises(ValidationError, match="observer"):
            ctx.add_observer(object())
        ctx.add_observer(Failing())
        ctx.add_observer(Recording())
        ProviderAPI(ctx).register(service=SERVICE, host=HOST, port=9103)
        with caplog.at_level(logging.ERROR, logger="polaris_sdk.observe"):
            assert len(ConsumerAPI(ctx).get_all_instances(service=SERVICE)) == 1
            wait_until(lambda: seen and "observer bug" in caplog.text)
        assert set(seen) == {ServiceKey("default", SERVICE)}
