"""PolarisServer(data_dir=...): registrations survive a restart on the same directory.

Every test talks to the server over real sockets with the official stubs;
"restart" is a new PolarisServer on the same data directory, as a new
process would be (the data is read back from the database, not kept in
memory).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk import wire
from polaris_sdk.server import DEFAULT_SYSTEM_SERVICES, SYSTEM_SERVICES, PolarisServer
from polaris_sdk.server.naming import LAST_HEARTBEAT_KEY, SYSTEM_NAMESPACE, NamingService
from polaris_sdk.server.store import DataDirLockedError, SqliteStore
from tests.server.helpers import (
    CALL_TIMEOUT,
    SERVICES,
    b,
    discover,
    discover_request,
    instance,
    new_stub,
    s,
    u,
)
from tests.support import wait_until


def serve(data_dir: Path, **options: Any) -> PolarisServer:
    return PolarisServer(grpc_port=0, data_dir=data_dir, **options)


class Client:
    """A channel and stub to one running server."""

    def __init__(self, server: PolarisServer) -> None:
        self.channel, self.stub = new_stub(server.grpc_address)

    def __enter__(self) -> grpcapi_pb2_grpc.PolarisGRPCStub:
        return self.stub

    def __exit__(self, *exc: object) -> None:
        self.channel.close()


def rich_instance() -> Any:
    """An instance with every field a registration may carry."""
    msg = instance(
        "orders",
        "shop",
        "10.1.0.5",
        9090,
        ttl=7,
        protocol=s("grpc"),
        version=s("2.0.1"),
        weight=u(300),
        priority=u(1),
        isolate=b(True),
        vpc_id=s("vpc-1"),
        logic_set=s("set-1"),
    )
    msg.location.region.value = "eu"
    msg.location.zone.value = "eu-1"
    msg.location.campus.value = "eu-1a"
    msg.metadata.update({"env": "prod", "owner": "team-b", "unicode": "ü✓"})
    return msg


@pytest.fixture
def data_dir(tmp_path: Path, no_thread_leak: None) -> Iterator[Path]:
    yield tmp_path / "polaris-data"


def test_namespaces_services_instances_and_metadata_survive_a_restart(data_dir: Path) -> None:
    with serve(data_dir) as first, Client(first) as stub:
        rich = stub.RegisterInstance(rich_instance(), timeout=CALL_TIMEOUT)
        plain = stub.RegisterInstance(instance("orders", "shop", port=1), timeout=CALL_TIMEOUT)
        gone = stub.RegisterInstance(instance("orders", "shop", port=2), timeout=CALL_TIMEOUT)
        stub.DeregisterInstance(gone.instance, timeout=CALL_TIMEOUT)
        before = discover(stub, discover_request("orders", "shop"))
        services_before = discover(stub, discover_request("", "shop", kind=SERVICES))

    with serve(data_dir) as second, Client(second) as stub:
        after = discover(stub, discover_request("orders", "shop"))
        services_after = discover(stub, discover_request("", "shop", kind=SERVICES))
        unchanged = discover(
            stub, discover_request("orders", "shop", before.service.revision.value)
        )

    assert rich.code.value == plain.code.value == code_pb2.ExecuteSuccess
    assert after.code.value == code_pb2.ExecuteSuccess
    # Byte for byte the same answer: ids, fields, metadata, health check, times, revisions.
    assert after.SerializeToString() == before.SerializeToString()
    assert sorted(i.id.value for i in after.instances) == sorted(
        [rich.instance.id.value, plain.instance.id.value]
    )
    assert services_after.SerializeToString() == services_before.SerializeToString()
    # A client polling with the revision it had before the restart sees no change.
    assert unchanged.code.value == code_pb2.DataNoChange


def test_health_state_comes_back_and_heartbeat_clocks_restart(data_dir: Path) -> None:
    # The checker runs often, so a TTL of 1 s turns an instance unhealthy in about 3 s.
    with serve(data_dir, health_check_interval=0.1) as first, Client(first) as stub:
        silent = stub.RegisterInstance(instance(port=1, ttl=1), timeout=CALL_TIMEOUT)
        beating = instance(port=2, ttl=1)
        stub.RegisterInstance(beating, timeout=CALL_TIMEOUT)

        def silent_is_unhealthy_and_beating_healthy() -> bool:
            stub.Heartbeat(beating, timeout=CALL_TIMEOUT)
            state = {
                i.port.value: i.healthy.value for i in discover(stub, discover_request()).instances
            }
            return state == {1: False, 2: True}

        wait_until(silent_is_unhealthy_and_beating_healthy, timeout=15)

    with serve(data_dir, health_check_interval=0.1) as second, Client(second) as stub:
        restored = {i.port.value: i for i in discover(stub, discover_request()).instances}
        # The instance the server knows from disk gets 200000, not a forgiven-unknown answer.
        beat = stub.Heartbeat(instance(port=1), timeout=CALL_TIMEOUT)

        def silent_is_healthy_again() -> bool:
            stub.Heartbeat(instance(port=1), timeout=CALL_TIMEOUT)
            answer = discover(stub, discover_request())
            return all(i.healthy.value for i in answer.instances if i.port.value == 1)

        wait_until(silent_is_healthy_again, timeout=15)

    assert not restored[1].healthy.value
    assert LAST_HEARTBEAT_KEY in restored[1].metadata
    assert restored[1].health_check.heartbeat.ttl.value == 1
    assert restored[2].healthy.value
    assert beat.code.value == code_pb2.ExecuteSuccess
    assert second.naming.store.get_instance(silent.instance.id.value) is not None
    # The beat was recorded by the new server: its book knows the instance.
    assert second.naming.heartbeats.last_beat(silent.instance.id.value) is not None


def test_a_wipe_is_persisted_too(data_dir: Path) -> None:
    with serve(data_dir) as first, Client(first) as stub:
        stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        first.clear()

    with serve(data_dir) as second, Client(second) as stub:
        answer = discover(stub, discover_request())

    assert answer.code.value == code_pb2.NotFoundResource


def test_stop_and_start_reload_from_disk_and_release_the_directory(data_dir: Path) -> None:
    server = serve(data_dir).start()
    try:
        with Client(server) as stub:
            stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        server.stop()
        # Stopped, the directory is free: another server may use it meanwhile.
        with serve(data_dir) as other, Client(other) as stub:
            stub.RegisterInstance(instance(port=9), timeout=CALL_TIMEOUT)

        server.start()
        with Client(server) as stub:
            ports = sorted(i.port.value for i in discover(stub, discover_request()).instances)
    finally:
        server.stop()

    assert ports == [9, 8080]


def test_a_second_server_on_a_directory_in_use_is_refused(data_dir: Path) -> None:
    with serve(data_dir), pytest.raises(DataDirLockedError):
        serve(data_dir)


def test_self_registrations_left_by_a_killed_run_are_forgotten(data_dir: Path) -> None:
    # What a run killed before it could deregister itself leaves behind.
    with SqliteStore(data_dir / "polaris.db") as store:
        naming = NamingService(store)
        for service in SYSTEM_SERVICES:
            stale = wire.Instance(
                namespace=wire.StringValue(value=SYSTEM_NAMESPACE),
                service=wire.StringValue(value=service),
                host=wire.StringValue(value="127.0.0.1"),
                port=wire.UInt32Value(value=1),
            )
            assert naming.register_instance(stale).code.value == code_pb2.ExecuteSuccess

    with serve(data_dir) as server:
        views = {
            s: server.naming.store.service_instances(SYSTEM_NAMESPACE, s) for s in SYSTEM_SERVICES
        }
        port = server.grpc_port

    # Those this run registers itself as hold it alone; the others nothing.
    for service, view in views.items():
        assert view is not None
        expected = [port] if service in DEFAULT_SYSTEM_SERVICES else []
        assert [i.port for i in view.instances] == expected, service


def test_a_failed_write_is_not_acknowledged(data_dir: Path) -> None:
    with serve(data_dir) as server, Client(server) as stub:
        stub.RegisterInstance(instance(port=1), timeout=CALL_TIMEOUT)
        db = sqlite3.connect(data_dir / "polaris.db", isolation_level=None)
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON instance "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        db.close()

        refused = stub.RegisterInstance(instance(port=2), timeout=CALL_TIMEOUT)
        listed = discover(stub, discover_request())

    assert refused.code.value != code_pb2.ExecuteSuccess
    assert refused.code.value // 1000 == 500
    assert [i.port.value for i in listed.instances] == [1]
