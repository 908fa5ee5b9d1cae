"""The SQLite store plugin on its own: tables, round trips, transactions, locking, reopening.

The store contract shared with the memory store is in test_store.py; these
tests look at the database file too, through a second plain connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from polaris_sdk.server.store import (
    DataDirLockedError,
    HealthCheckRecord,
    InstanceRecord,
    NamespaceRecord,
    ServiceRecord,
    SqliteStore,
)
from polaris_sdk.server.store.sqlite import SCHEMA_VERSION

NAMESPACE = NamespaceRecord("prod", comment="production", ctime=1_700_000_000.25)
SERVICE = ServiceRecord(
    "prod",
    "echo",
    id="svc-1",
    revision="srev",
    metadata={"owner": "team-a", "tier": "1"},
    comment="echo service",
    ctime=1_700_000_001.5,
    mtime=1_700_000_002.75,
)
FULL = InstanceRecord(
    id="i-full",
    namespace="prod",
    service="echo",
    host="10.0.0.7",
    port=8443,
    revision="rev-1",
    vpc_id="vpc-9",
    protocol="grpc",
    version="1.2.3",
    priority=2,
    weight=250,
    healthy=False,
    isolate=True,
    enable_health_check=True,
    health_check=HealthCheckRecord(type=1, ttl=7),
    logic_set="set-a",
    region="r",
    zone="z",
    campus="c",
    metadata={"env": "prod", "internal-lastheartbeat": "1700000003", "unicode": "ü✓"},
    ctime=1_700_000_003.125,
    mtime=1_700_000_004.0625,
)
BARE = InstanceRecord(
    id="i-bare", namespace="prod", service="echo", host="10.0.0.8", port=0, revision="rev-2"
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "polaris.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as opened:
        opened.add_namespace(NAMESPACE)
        opened.add_service(SERVICE)
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    """A second, plain connection: what is on disk, not what the store caches."""
    return sqlite3.connect(path, isolation_level=None)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = raw(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_every_field_survives_a_reopen(store: SqliteStore, path: Path) -> None:
    store.modify_instance(FULL.id, lambda old: FULL)
    store.modify_instance(BARE.id, lambda old: BARE)
    store.close()

    with SqliteStore(path) as reopened:
        assert reopened.get_namespace("prod") == NAMESPACE
        assert reopened.get_service("prod", "echo") == SERVICE
        assert reopened.get_instance(FULL.id) == FULL
        assert reopened.get_instance(BARE.id) == BARE
        view = reopened.service_instances("prod", "echo")
        assert view is not None
        assert [i.id for i in view.instances] == [BARE.id, FULL.id]
        assert [i.id for i in reopened.health_checked_instances()] == [FULL.id]


def test_an_instance_is_split_into_three_tables(store: SqliteStore, path: Path) -> None:
    store.modify_instance(FULL.id, lambda old: FULL)

    instance = rows(path, "SELECT id, service_id, host, port, health_status, isolate FROM instance")
    assert instance == [("i-full", "svc-1", "10.0.0.7", 8443, 0, 1)]
    assert rows(path, "SELECT id, type, ttl FROM health_check") == [("i-full", 1, 7)]
    assert sorted(rows(path, "SELECT mkey, mvalue FROM instance_metadata")) == sorted(
        FULL.metadata.items()
    )
    assert sorted(rows(path, "SELECT mkey, mvalue FROM service_metadata")) == sorted(
        SERVICE.metadata.items()
    )


def test_an_update_rewrites_the_health_check_and_metadata_rows(
    store: SqliteStore, path: Path
) -> None:
    store.modify_instance(FULL.id, lambda old: FULL)

    store.modify_instance(
        FULL.id,
        lambda old: InstanceRecord(
            id=FULL.id, namespace="prod", service="echo", host="h", port=1, revision="rev-3"
        ),
    )

    assert rows(path, "SELECT count(*) FROM health_check") == [(0,)]
    assert rows(path, "SELECT count(*) FROM instance_metadata") == [(0,)]
    assert rows(path, "SELECT host, revision FROM instance") == [("h", "rev-3")]


def test_delete_removes_the_rows_of_all_three_tables(store: SqliteStore, path: Path) -> None:
    store.modify_instance(FULL.id, lambda old: FULL)

    assert store.delete_instance(FULL.id) == FULL

    for table in ("instance", "health_check", "instance_metadata"):
        assert rows(path, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_a_write_is_on_disk_when_the_call_returns(store: SqliteStore, path: Path) -> None:
    store.modify_instance(BARE.id, lambda old: BARE)

    assert rows(path, "SELECT id FROM instance") == [(BARE.id,)]


def test_a_failed_transaction_changes_neither_disk_nor_cache(
    store: SqliteStore, path: Path
) -> None:
    store.modify_instance(BARE.id, lambda old: BARE)
    # A real SQLite failure half way through the write: the metadata insert,
    # after the instance and health_check rows were written in the transaction.
    db = raw(path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON instance_metadata "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    db.close()

    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        store.modify_instance(FULL.id, lambda old: FULL)

    assert store.get_instance(FULL.id) is None
    view = store.service_instances("prod", "echo")
    assert view is not None and [i.id for i in view.instances] == [BARE.id]
    assert rows(path, "SELECT id FROM instance") == [(BARE.id,)]
    assert rows(path, "SELECT count(*) FROM health_check") == [(0,)]
    # The store still works after the failure (no metadata row, so no trigger).
    store.modify_instance(FULL.id, lambda old: replace(FULL, metadata={}))
    assert rows(path, "SELECT count(*) FROM instance") == [(2,)]


def test_wal_journal_and_the_synchronous_level(path: Path) -> None:
    with SqliteStore(path):
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    for mode, number in (("NORMAL", 1), ("full", 2)):
        with SqliteStore(path, synchronous=mode) as store:
            assert store.synchronous == mode.upper()
            # The level belongs to the connection: read it through the store's own.
            assert store._database is not None
            assert store._database.db.execute("PRAGMA synchronous").fetchone() == (number,)
    with pytest.raises(ValueError):
        SqliteStore(path, synchronous="OFF")


def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(
    store: SqliteStore, path: Path
) -> None:
    with pytest.raises(DataDirLockedError, match="in use"):
        SqliteStore(path)

    store.close()

    SqliteStore(path).close()


def test_a_closed_store_reads_from_its_cache_and_reopens_to_write(
    store: SqliteStore, path: Path
) -> None:
    store.modify_instance(BARE.id, lambda old: BARE)
    store.close()
    assert store.closed
    assert store.get_instance(BARE.id) == BARE
    # Closed means the file is free for someone else meanwhile.
    with SqliteStore(path) as other:
        other.delete_instance(BARE.id)

    store.modify_instance(FULL.id, lambda old: FULL)

    assert not store.closed
    assert store.get_instance(BARE.id) is None  # reloaded from disk on reopening
    assert store.get_instance(FULL.id) == FULL


def test_clear_empties_every_table(store: SqliteStore, path: Path) -> None:
    store.modify_instance(FULL.id, lambda old: FULL)

    store.clear()

    for table in (
        "namespace",
        "service",
        "service_metadata",
        "instance",
        "health_check",
        "instance_metadata",
    ):
        assert rows(path, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert store.list_namespaces() == []


def test_a_database_from_a_newer_version_is_refused(path: Path) -> None:
    SqliteStore(path).close()
    db = raw(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        SqliteStore(path)
    # The failed open left the file free.
    db = raw(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.close()
    SqliteStore(path).close()
