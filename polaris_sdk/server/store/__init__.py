"""Store plugins of the embedded server: the protocol, the memory store and the SQLite store."""

from polaris_sdk.server.store.base import (
    EMPTY_REVISION,
    HealthCheckRecord,
    InstanceRecord,
    NamespaceRecord,
    ServiceInstancesView,
    ServiceRecord,
    Store,
    service_revision,
)
from polaris_sdk.server.store.memory import MemoryStore
from polaris_sdk.server.store.sqlite import DataDirLockedError, SqliteStore

__all__ = [
    "EMPTY_REVISION",
    "DataDirLockedError",
    "HealthCheckRecord",
    "InstanceRecord",
    "MemoryStore",
    "NamespaceRecord",
    "ServiceInstancesView",
    "ServiceRecord",
    "SqliteStore",
    "Store",
    "service_revision",
]
