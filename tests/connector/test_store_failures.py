"""A failing store answers 500001 StoreLayerException, as a real server's does.

The failure is SQLite's own: a trigger, added to the server's database from a
second connection, aborts every write to the instance table, so the server's
SQLite store raises :class:`sqlite3.Error` from inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from polaris_sdk import InstanceDeregisterRequest, InstanceRegisterRequest, ServiceKey
from polaris_sdk.connector import create_connector
from polaris_sdk.errors import ServerInternalError
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.store.sqlite import DB_FILENAME
from tests.connector.servers import TRANSPORTS, address_of, transport_config

ECHO = ServiceKey("default", "echo")
REQ = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=8080)
STORE_LAYER_EXCEPTION = 500001


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_server(no_thread_leak: None, tmp_path: Path) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0, http_port=0, data_dir=tmp_path) as server:
        yield server


def fail_instance_writes(database: Path, *events: str) -> sqlite3.Connection:
    db = sqlite3.connect(database, isolation_level=None)
    for event in events:
        db.execute(
            f"CREATE TRIGGER fail_{event.lower()} BEFORE {event} ON instance "
            "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END"
        )
    return db


def test_a_store_failure_is_store_layer_exception(
    sqlite_server: PolarisServer, tmp_path: Path, transport: str
) -> None:
    connector = create_connector(
        transport_config(
            transport, address_of(sqlite_server, transport), **{"global.api.maxRetryTimes": 1}
        )
    )
    try:
        iid = connector.register_instance(REQ, None).instance_id
        db = fail_instance_writes(tmp_path / DB_FILENAME, "INSERT", "DELETE")
        try:
            again = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=8081)
            with pytest.raises(ServerInternalError) as info:
                connector.register_instance(again, None)
            assert info.value.code == STORE_LAYER_EXCEPTION
            assert info.value.info == "store layer exception"
            with pytest.raises(ServerInternalError) as info:
                connector.deregister_instance(InstanceDeregisterRequest(instance_id=iid))
            assert info.value.code == STORE_LAYER_EXCEPTION
        finally:
            db.execute("DROP TRIGGER fail_insert")
            db.execute("DROP TRIGGER fail_delete")
            db.close()
        # The store works again once the fault is gone; nothing half-written stayed.
        snapshot = connector.discover_instances(ECHO)
        assert snapshot is not None and [i.id for i in snapshot] == [iid]
        connector.deregister_instance(InstanceDeregisterRequest(instance_id=iid))
    finally:
        connector.close()
