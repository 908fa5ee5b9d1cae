"""``/metrics``: Prometheus text scraped over HTTP."""

from __future__ import annotations

import builtins
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext
from polaris_sdk.server import PolarisServer
from tests.support import wait_until


def scrape(server: PolarisServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{server.http_address}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_requests_and_instances_by_health_are_exported(server: PolarisServer) -> None:
    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        provider = ProviderAPI(ctx)
        provider.register(namespace="default", service="echo", host="10.0.0.1", port=80, ttl=1)
        provider.register(namespace="default", service="echo", host="10.0.0.2", port=80)
        ConsumerAPI(ctx).get_all_instances(namespace="default", service="echo")
    httpx.get(f"{server.http_address}/naming/v1/instances", params={"service": "echo"})

    echo = (("namespace", "default"), ("service", "echo"))
    # 10.0.0.1 never beats: unhealthy after 3 x TTL.
    samples = wait_until(
        lambda: (s := scrape(server)).get(("instance_abnormal_count", echo)) == 1 and s,
        timeout=20,
    )
    assert samples[("instance_count", echo)] == 2
    assert samples[("instance_online_count", echo)] == 1
    assert samples[("service_count", (("namespace", "default"),))] == 1
    register = (
        "client_rq_total",
        (("api", "RegisterInstance"), ("err_code", "200000"), ("protocol", "grpc")),
    )
    assert samples[register] == 2
    discovered = [k for k in samples if k[0] == "client_rq_total" and ("api", "Discover") in k[1]]
    assert discovered
    admin = (
        "client_rq_total",
        (("api", "GET:/naming/v1/instances"), ("err_code", "200000"), ("protocol", "http")),
    )
    assert samples[admin] == 1


def test_without_prometheus_client_metrics_answer_404_saying_why(
    server: PolarisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    answer = httpx.get(f"{server.http_address}/metrics", timeout=10)

    assert answer.status_code == 404
    assert "pip install 'polarismesh-sdk[metrics]'" in answer.text
