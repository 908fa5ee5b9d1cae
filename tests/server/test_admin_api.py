"""The admin API (``/naming/v1/...``), health and index answers, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from polaris_sdk import ProviderAPI, SDKContext
from polaris_sdk.server import PolarisServer
from tests.support import wait_until

INSTANCES = "/naming/v1/instances"


@pytest.fixture
def admin(server: PolarisServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_address, timeout=10) as client:
        yield client


def instance(host: str, port: int = 80, service: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"namespace": "default", "service": service, "host": host, "port": port, **fields}


def create(client: httpx.Client, *instances: dict[str, Any]) -> httpx.Response:
    answer = client.post(INSTANCES, json=list(instances))
    assert answer.status_code == 200, answer.text
    return answer


def listed(client: httpx.Client, **query: Any) -> dict[str, Any]:
    answer = client.get(INSTANCES, params=query)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_created_instances_are_listed_with_amount_and_size(admin: httpx.Client) -> None:
    create(admin, instance("10.0.0.1", metadata={"env": "prod"}), instance("10.0.0.2"))

    body = listed(admin, service="echo", namespace="default")

    assert (body["code"], body["info"], body["amount"], body["size"]) == (
        200000,
        "execute success",
        2,
        2,
    )
    hosts = {i["host"]: i for i in body["instances"]}
    assert set(hosts) == {"10.0.0.1", "10.0.0.2"}
    assert hosts["10.0.0.1"]["metadata"] == {"env": "prod"}
    assert hosts["10.0.0.1"]["healthy"] is True and hosts["10.0.0.1"]["isolate"] is False


def test_filters_and_pages(admin: httpx.Client) -> None:
    create(admin, *(instance(f"10.0.1.{n}", 8000 + n) for n in range(5)))
    create(admin, instance("10.0.2.1", isolate=True, metadata={"zone": "a"}))

    assert listed(admin, service="echo", host="10.0.1.3")["amount"] == 1
    assert listed(admin, service="echo", port="8001")["instances"][0]["host"] == "10.0.1.1"
    assert [i["host"] for i in listed(admin, service="echo", isolate="true")["instances"]] == [
        "10.0.2.1"
    ]
    assert listed(admin, service="echo", keys="zone", values="a")["amount"] == 1
    assert listed(admin, service="ech*")["amount"] == 6

    first = listed(admin, service="echo", limit="4")
    second = listed(admin, service="echo", offset="4", limit="4")
    assert (first["amount"], first["size"], second["amount"], second["size"]) == (6, 4, 6, 2)
    seen = [i["id"] for i in first["instances"] + second["instances"]]
    assert len(set(seen)) == 6


@pytest.mark.parametrize(
    ("query", "code", "info"),
    [
        ({}, 400104, "query instance parameter is empty"),
        ({"service": "echo", "colour": "red"}, 400103, "colour is not allowed"),
        ({"service": ""}, 400103, "the value for service is empty"),
        ({"service": "echo", "keys": "a"}, 400105, None),
        ({"service": "echo", "limit": "many"}, 400103, None),
    ],
)
def test_bad_queries_get_the_real_servers_codes(
    admin: httpx.Client, query: dict[str, str], code: int, info: str | None
) -> None:
    answer = admin.get(INSTANCES, params=query)

    assert answer.status_code == 400
    assert answer.json()["code"] == code
    assert answer.headers["X-Polaris-Code"] == str(code)
    if info is not None:
        assert answer.json()["info"] == info


def test_update_isolates_reweights_and_replaces_metadata(admin: httpx.Client) -> None:
    create(admin, instance("10.0.0.1", metadata={"old": "1"}))

    answer = admin.put(
        INSTANCES, json=[instance("10.0.0.1", isolate=True, weight=7, metadata={"new": "2"})]
    )
    again = admin.put(INSTANCES, json=[instance("10.0.0.1", isolate=True)])
    missing = admin.put(INSTANCES, json=[instance("10.9.9.9", isolate=True)])

    assert answer.status_code == 200 and answer.json()["code"] == 200000
    [stored] = listed(admin, service="echo")["instances"]
    assert (stored["isolate"], stored["weight"], stored["metadata"]) == (True, 7, {"new": "2"})
    assert again.json()["code"] == 200002  # NoNeedUpdate
    assert (missing.status_code, missing.json()["code"]) == (400, 400303)


def test_delete_removes_and_is_idempotent(admin: httpx.Client) -> None:
    create(admin, instance("10.0.0.1"), instance("10.0.0.2"))

    first = admin.post(f"{INSTANCES}/delete", json=[instance("10.0.0.1")])
    again = admin.post(f"{INSTANCES}/delete", json=[instance("10.0.0.1")])

    assert first.json()["code"] == again.json()["code"] == 200000
    assert [i["host"] for i in listed(admin, service="echo")["instances"]] == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[]", 400, 400002),
        (b'{"host": "x"}', 400, 400001),
        (
            b"["
            + b",".join([b'{"service":"s","namespace":"default","host":"h","port":1}'] * 101)
            + b"]",
            400,
            400003,
        ),
    ],
)
def test_bad_batches(admin: httpx.Client, body: bytes, status: int, code: int) -> None:
    answer = admin.post(INSTANCES, content=body, headers={"Content-Type": "application/json"})

    assert (answer.status_code, answer.json()["code"]) == (status, code)


def test_a_batch_with_mixed_answers_is_a_bad_request(admin: httpx.Client) -> None:
    answer = admin.post(INSTANCES, json=[instance("10.0.0.1"), instance("10.0.0.2", port=70000)])

    body = answer.json()
    assert (answer.status_code, body["code"], body["size"]) == (400, 400000, 2)
    assert [r["code"] for r in body["responses"]] == [200000, 400132]


def test_writes_need_json(admin: httpx.Client) -> None:
    answer = admin.post(INSTANCES, content=b"[]", headers={"Content-Type": "text/plain"})

    assert answer.status_code == 415


def test_services_and_namespaces_carry_counts_and_revisions(
    admin: httpx.Client, server: PolarisServer
) -> None:
    create(admin, instance("10.0.0.1"), instance("10.0.0.2", service="other"))

    services = admin.get("/naming/v1/services", params={"namespace": "default"}).json()
    namespaces = admin.get("/naming/v1/namespaces", params={"name": "default"}).json()

    assert [(s["name"], s["total_instance_count"]) for s in services["services"]] == [
        ("echo", 1),
        ("other", 1),
    ]
    view = server.naming.store.service_instances("default", "echo")
    assert view is not None and services["services"][0]["revision"] == view.revision
    [default] = namespaces["namespaces"]
    assert (default["total_service_count"], default["total_instance_count"]) == (2, 2)
    only = admin.get("/naming/v1/services", params={"name": "oth*"}).json()
    assert [s["name"] for s in only["services"]] == ["other"]


def test_listed_instances_carry_their_last_heartbeat(
    server: PolarisServer, admin: httpx.Client
) -> None:
    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        provider = ProviderAPI(ctx)
        key = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 80}
        provider.register(**key, ttl=5)
        assert (
            "last-heartbeat-time" not in listed(admin, service="echo")["instances"][0]["metadata"]
        )
        provider.heartbeat(**key)

    [item] = listed(admin, service="echo")["instances"]
    assert item["metadata"]["last-heartbeat-timestamp"].isdigit()
    assert item["metadata"]["last-heartbeat-time"]


def test_index_and_health(server: PolarisServer, admin: httpx.Client) -> None:
    assert (admin.get("/").status_code, admin.get("/").text) == (200, "Polaris Server")
    assert admin.get("/healthz").text == "ok\n"
    browser = admin.get("/", headers={"Accept": "text/html,*/*"})
    assert (browser.status_code, browser.headers["Location"]) == (302, "/console")


@pytest.fixture
def guarded(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(tokens={"admin": None, "team": ["team"]}) as running:
        yield running


def test_admin_calls_are_authorised_like_other_writes(guarded: PolarisServer) -> None:
    with httpx.Client(base_url=guarded.http_address, timeout=10) as client:
        no_token = client.get(INSTANCES, params={"service": "echo"})
        team_elsewhere = client.post(
            INSTANCES, json=[instance("10.0.0.1")], headers={"X-Polaris-Token": "team"}
        )
        admin_write = client.post(
            INSTANCES,
            json=[instance("10.0.0.1"), {**instance("10.0.0.2"), "namespace": "team"}],
            headers={"X-Polaris-Token": "admin"},
        )
        team_update = client.put(
            INSTANCES,
            json=[{"id": admin_write.json()["responses"][0]["instance"]["id"], "isolate": True}],
            headers={"X-Polaris-Token": "team"},
        )
        team_namespaces = client.get(
            "/naming/v1/namespaces", headers={"X-Polaris-Token": "team"}
        ).json()

    assert (no_token.status_code, no_token.json()["code"]) == (401, 401002)
    assert team_elsewhere.json()["responses"][0]["code"] == 401001
    assert admin_write.json()["code"] == 200000
    # The id names an instance stored in "default": the team token may not touch it.
    assert team_update.json()["responses"][0]["code"] == 401001
    assert [n["name"] for n in team_namespaces["namespaces"]] == ["team"]


def test_unhealthy_instances_are_deleted_when_asked(no_thread_leak: None) -> None:
    with PolarisServer(health_check_interval=0.05, delete_unhealthy_after=0.3) as server:
        with SDKContext.create(addresses=[server.grpc_address]) as ctx:
            ProviderAPI(ctx).register(
                namespace="default", service="echo", host="10.0.0.1", port=80, ttl=1
            )
        store = server.naming.store

        def gone() -> bool:
            view = store.service_instances("default", "echo")
            return view is not None and not view.instances

        wait_until(lambda: any(not i.healthy for i in store.health_checked_instances()) or gone())
        wait_until(gone, message="the unhealthy instance was not deleted")


def test_unhealthy_instances_stay_by_default(server: PolarisServer) -> None:
    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        ProviderAPI(ctx).register(
            namespace="default", service="echo", host="10.0.0.1", port=80, ttl=1
        )
    store = server.naming.store
    wait_until(lambda: [i for i in store.health_checked_instances() if not i.healthy])
    # More checks go by: the instance is still there.
    checker = server._checker
    assert checker.delete_unhealthy_after is None
    for _ in range(3):
        checker.check_once()
    view = store.service_instances("default", "echo")
    assert view is not None and len(view.instances) == 1
