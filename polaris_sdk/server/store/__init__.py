"""Store plugins of the embedded server: the protocol and its memory implementation."""

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

__all__ = [
    "EMPTY_REVISION",
    "HealthCheckRecord",
    "InstanceRecord",
    "MemoryStore",
    "NamespaceRecord",
    "ServiceInstancesView",
    "ServiceRecord",
    "Store",
    "service_revision",
]
