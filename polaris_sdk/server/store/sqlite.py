"""The SQLite store plugin: the embedded server's persistent store, one file per data directory.

``SqliteStore(path)`` keeps namespaces, services and instances in the SQLite
database at ``path`` (the server uses ``DIR/polaris.db``). The tables follow
the real server's MySQL store: ``namespace``, ``service`` with
``service_metadata``, and an instance split into ``instance`` (identity,
address, flags, revision, times), ``health_check`` (type, TTL) and
``instance_metadata`` (one row per key), tied by foreign keys.

Reads never touch the disk: every record lives in a
:class:`~polaris_sdk.server.store.memory.MemoryStore` kept in front of the
database (write-through), so Discover costs what it costs with the memory
store, as a real server answers from its cache.

Writes: one lock serialises them; each is one transaction (``BEGIN
IMMEDIATE`` ... ``COMMIT``), and the cache changes only after the commit
returns, so a caller that got an answer has its change on disk. When the
transaction fails it is rolled back, the cache is left as it was and the
:class:`sqlite3.Error` propagates (the naming service answers 500001 StoreLayerException).

Durability: WAL with ``synchronous=NORMAL`` by default. A commit is then in
the WAL file (in the operating system's hands) before it returns, which
survives the server process being killed, even with ``kill -9``; it is not
synced to the device, so a power loss or kernel crash may lose the last
commits (never corrupt the database). That is the right trade for a server
meant for development and tests: a commit costs tens of microseconds instead
of an fsync (see bench/README.md). ``synchronous="FULL"`` syncs the WAL on
every commit and survives power loss too.

Restart: :meth:`SqliteStore.open` loads every record, so instances come back
with the health, isolation, revision and metadata they had when last
written. Heartbeat clocks are not stored (a beat is not a write): the health
checker starts counting an instance's 3 x TTL from its first check after the
restart, so an instance whose owner is gone turns unhealthy 3 x TTL later.

Lifecycle: the constructor opens the database and takes an exclusive lock
on ``path`` + ``.lock``, so two servers never share one data directory;
:meth:`~SqliteStore.close` releases both (idempotent). Closed is not final:
reads are served from the last cache, and the next write or :meth:`open`
opens the database again and reloads it. Thread-safe: any method from any
thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from polaris_sdk.server.store.base import (
    HealthCheckRecord,
    InstanceChange,
    InstanceRecord,
    NamespaceRecord,
    ServiceInstancesView,
    ServiceRecord,
)
from polaris_sdk.server.store.memory import MemoryStore

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; the directory is not guarded
    fcntl = None  # type: ignore[assignment]

__all__ = ["DB_FILENAME", "DataDirLockedError", "SqliteStore"]

log = logging.getLogger("polaris_sdk.server.store.sqlite")

DB_FILENAME: Final = "polaris.db"
SCHEMA_VERSION: Final = 1
SYNCHRONOUS_MODES: Final = ("NORMAL", "FULL")
# How long a statement waits for a lock held by another connection (a backup
# tool, say) before it fails, instead of failing at once or waiting forever.
_BUSY_TIMEOUT: Final = 5.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS namespace (
    name TEXT PRIMARY KEY,
    comment TEXT NOT NULL DEFAULT '',
    ctime REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS service (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespace (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    revision TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    UNIQUE (namespace, name)
);
CREATE TABLE IF NOT EXISTS service_metadata (
    id TEXT NOT NULL REFERENCES service (id) ON DELETE CASCADE,
    mkey TEXT NOT NULL,
    mvalue TEXT NOT NULL,
    PRIMARY KEY (id, mkey)
);
CREATE TABLE IF NOT EXISTS instance (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES service (id) ON DELETE CASCADE,
    vpc_id TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    version TEXT NOT NULL,
    health_status INTEGER NOT NULL,
    isolate INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    enable_health_check INTEGER NOT NULL,
    logic_set TEXT NOT NULL,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    campus TEXT NOT NULL,
    priority INTEGER NOT NULL,
    revision TEXT NOT NULL,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_service_id ON instance (service_id);
CREATE TABLE IF NOT EXISTS health_check (
    id TEXT PRIMARY KEY REFERENCES instance (id) ON DELETE CASCADE,
    type INTEGER NOT NULL,
    ttl INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instance_metadata (
    id TEXT NOT NULL REFERENCES instance (id) ON DELETE CASCADE,
    mkey TEXT NOT NULL,
    mvalue TEXT NOT NULL,
    PRIMARY KEY (id, mkey)
);
"""

_UPSERT_INSTANCE: Final = """
INSERT INTO instance (
    id, service_id, vpc_id, host, port, protocol, version, health_status, isolate, weight,
    enable_health_check, logic_set, region, zone, campus, priority, revision, ctime, mtime
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    service_id = excluded.service_id, vpc_id = excluded.vpc_id, host = excluded.host,
    port = excluded.port, protocol = excluded.protocol, version = excluded.version,
    health_status = excluded.health_status, isolate = excluded.isolate,
    weight = excluded.weight, enable_health_check = excluded.enable_health_check,
    logic_set = excluded.logic_set, region = excluded.region, zone = excluded.zone,
    campus = excluded.campus, priority = excluded.priority, revision = excluded.revision,
    ctime = excluded.ctime, mtime = excluded.mtime
"""

_SELECT_INSTANCES: Final = """
SELECT i.id, s.namespace, s.name, i.host, i.port, i.revision, i.vpc_id, i.protocol,
       i.version, i.priority, i.weight, i.health_status, i.isolate, i.enable_health_check,
       i.logic_set, i.region, i.zone, i.campus, i.ctime, i.mtime
FROM instance i JOIN service s ON s.id = i.service_id
"""


class DataDirLockedError(OSError):
    """Another store (in this process or another) has the database open."""


def _grouped(rows: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    """``{id: {key: value}}`` from ``(id, key, value)`` metadata rows."""
    grouped: dict[str, dict[str, str]] = {}
    for owner, key, value in rows:
        grouped.setdefault(owner, {})[key] = value
    return grouped


class _Database:
    """An open database: the connection and the held directory lock."""

    def __init__(self, path: Path, synchronous: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_file = _lock(path.with_name(path.name + ".lock"))
        try:
            self.db = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                _prepare(self.db, synchronous)
            except BaseException:
                self.db.close()
                raise
        except BaseException:
            self.lock_file.close()
            raise

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self.lock_file.close()


def _lock(path: Path) -> IO[bytes]:
    handle = path.open("ab")
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.close()
            raise DataDirLockedError(
                f"{path.parent} is in use by another Polaris server (lock {path.name})"
            ) from err
    return handle


def _prepare(db: sqlite3.Connection, synchronous: str) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode})")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=ON")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
        )
    db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _load(db: sqlite3.Connection) -> tuple[MemoryStore, int]:
    """Every record of the database in a fresh cache, and how many instances there are."""
    cache = MemoryStore()
    for name, comment, ctime in db.execute("SELECT name, comment, ctime FROM namespace"):
        cache.add_namespace(NamespaceRecord(name=name, comment=comment, ctime=ctime))
    service_metadata = _grouped(db.execute("SELECT id, mkey, mvalue FROM service_metadata"))
    rows = db.execute(
        "SELECT id, namespace, name, revision, comment, ctime, mtime FROM service"
    ).fetchall()
    for sid, namespace, name, revision, comment, ctime, mtime in rows:
        cache.add_service(
            ServiceRecord(
                namespace=namespace,
                name=name,
                id=sid,
                revision=revision,
                metadata=service_metadata.get(sid, {}),
                comment=comment,
                ctime=ctime,
                mtime=mtime,
            )
        )
    checks = {
        iid: HealthCheckRecord(type=kind, ttl=ttl)
        for iid, kind, ttl in db.execute("SELECT id, type, ttl FROM health_check")
    }
    metadata = _grouped(db.execute("SELECT id, mkey, mvalue FROM instance_metadata"))
    rows = db.execute(_SELECT_INSTANCES).fetchall()
    for row in rows:
        record = _instance_from_row(row, checks, metadata)
        cache.modify_instance(record.id, _becomes(record))
    return cache, len(rows)


def _becomes(record: InstanceRecord) -> InstanceChange:
    """A change that stores ``record`` whatever was there."""
    return lambda _current: record


def _instance_from_row(
    row: Any, checks: dict[str, HealthCheckRecord], metadata: dict[str, dict[str, str]]
) -> InstanceRecord:
    (iid, namespace, service, host, port, revision, vpc_id, protocol, version, priority) = row[:10]
    (weight, healthy, isolate, enable_check, logic_set, region, zone, campus) = row[10:18]
    ctime, mtime = row[18:]
    return InstanceRecord(
        id=iid,
        namespace=namespace,
        service=service,
        host=host,
        port=port,
        revision=revision,
        vpc_id=vpc_id,
        protocol=protocol,
        version=version,
        priority=priority,
        weight=weight,
        healthy=bool(healthy),
        isolate=bool(isolate),
        enable_health_check=bool(enable_check),
        health_check=checks.get(iid),
        logic_set=logic_set,
        region=region,
        zone=zone,
        campus=campus,
        metadata=metadata.get(iid, {}),
        ctime=ctime,
        mtime=mtime,
    )


def _write_instance(db: sqlite3.Connection, iid: str, record: InstanceRecord, sid: str) -> None:
    db.execute(
        _UPSERT_INSTANCE,
        (
            iid,
            sid,
            record.vpc_id,
            record.host,
            record.port,
            record.protocol,
            record.version,
            int(record.healthy),
            int(record.isolate),
            record.weight,
            int(record.enable_health_check),
            record.logic_set,
            record.region,
            record.zone,
            record.campus,
            record.priority,
            record.revision,
            record.ctime,
            record.mtime,
        ),
    )
    db.execute("DELETE FROM health_check WHERE id = ?", (iid,))
    if record.health_check is not None:
        db.execute(
            "INSERT INTO health_check (id, type, ttl) VALUES (?, ?, ?)",
            (iid, record.health_check.type, record.health_check.ttl),
        )
    db.execute("DELETE FROM instance_metadata WHERE id = ?", (iid,))
    db.executemany(
        "INSERT INTO instance_metadata (id, mkey, mvalue) VALUES (?, ?, ?)",
        [(iid, key, value) for key, value in record.metadata.items()],
    )


class SqliteStore:
    """A :class:`~polaris_sdk.server.store.base.Store` persisted in SQLite; see the module doc.

    ``synchronous`` is ``"NORMAL"`` (survives a killed process) or ``"FULL"``
    (survives a power loss too, at an fsync per write). Raises
    :class:`DataDirLockedError` when another store has ``path`` open.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = mode
        self._lock = threading.Lock()
        self._database: _Database | None = None
        self._cache = MemoryStore()
        self.open()

    # ------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._database is None

    def open(self) -> None:
        """Open the database and load every record into the cache (no-op when open)."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> sqlite3.Connection:
        if self._database is not None:
            return self._database.db
        database = _Database(self.path, self.synchronous)
        try:
            cache, instances = _load(database.db)
        except BaseException:
            database.close()
            raise
        self._database, self._cache = database, cache
        log.info(
            "opened %s: %d namespace(s), %d service(s), %d instance(s)",
            self.path,
            len(cache.list_namespaces()),
            len(cache.list_services()),
            instances,
        )
        return database.db

    def close(self) -> None:
        """Close the database and release the directory (idempotent); reads keep working."""
        with self._lock:
            database, self._database = self._database, None
            if database is not None:
                database.close()
                log.info("closed %s", self.path)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path} {'closed' if self.closed else 'open'}>"

    # ----------------------------------------------------------- namespaces

    def add_namespace(self, namespace: NamespaceRecord) -> NamespaceRecord:
        with self._lock:
            db = self._open_locked()
            existing = self._cache.get_namespace(namespace.name)
            if existing is not None:
                return existing
            with _transaction(db):
                db.execute(
                    "INSERT INTO namespace (name, comment, ctime) VALUES (?, ?, ?)",
                    (namespace.name, namespace.comment, namespace.ctime),
                )
            return self._cache.add_namespace(namespace)

    def get_namespace(self, name: str) -> NamespaceRecord | None:
        return self._cache.get_namespace(name)

    def list_namespaces(self) -> list[NamespaceRecord]:
        return self._cache.list_namespaces()

    # ------------------------------------------------------------- services

    def add_service(self, service: ServiceRecord) -> ServiceRecord:
        with self._lock:
            db = self._open_locked()
            existing = self._cache.get_service(service.namespace, service.name)
            if existing is not None:
                return existing
            if self._cache.get_namespace(service.namespace) is None:
                raise LookupError(f"namespace {service.namespace!r} does not exist")
            with _transaction(db):
                db.execute(
                    "INSERT INTO service (id, namespace, name, revision, comment, ctime, mtime)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        service.id,
                        service.namespace,
                        service.name,
                        service.revision,
                        service.comment,
                        service.ctime,
                        service.mtime,
                    ),
                )
                db.executemany(
                    "INSERT INTO service_metadata (id, mkey, mvalue) VALUES (?, ?, ?)",
                    [(service.id, key, value) for key, value in service.metadata.items()],
                )
            return self._cache.add_service(service)

    def get_service(self, namespace: str, name: str) -> ServiceRecord | None:
        return self._cache.get_service(namespace, name)

    def list_services(self, namespace: str | None = None) -> list[ServiceRecord]:
        return self._cache.list_services(namespace)

    # ------------------------------------------------------------ instances

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return self._cache.get_instance(instance_id)

    def modify_instance(
        self, instance_id: str, change: InstanceChange
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        with self._lock:
            db = self._open_locked()
            cache = self._cache
            old = cache.get_instance(instance_id)
            new = change(old)
            if new is None:
                return old, old
            service = cache.get_service(new.namespace, new.service)
            if service is None:
                raise LookupError(f"service {new.namespace}/{new.service} does not exist")
            with _transaction(db):
                _write_instance(db, instance_id, new, service.id)
            # Every write holds self._lock, so the cache still holds ``old`` here.
            cache.modify_instance(instance_id, _becomes(new))
            return old, new

    def delete_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            db = self._open_locked()
            if self._cache.get_instance(instance_id) is None:
                return None
            with _transaction(db):
                db.execute("DELETE FROM instance WHERE id = ?", (instance_id,))
            return self._cache.delete_instance(instance_id)

    def service_instances(self, namespace: str, name: str) -> ServiceInstancesView | None:
        return self._cache.service_instances(namespace, name)

    def health_checked_instances(self) -> list[InstanceRecord]:
        return self._cache.health_checked_instances()

    def clear(self) -> None:
        with self._lock:
            db = self._open_locked()
            with _transaction(db):
                # Children first: deleting parents would cascade row by row.
                for table in (
                    "instance_metadata",
                    "health_check",
                    "instance",
                    "service_metadata",
                    "service",
                    "namespace",
                ):
                    db.execute(f"DELETE FROM {table}")
            self._cache.clear()
