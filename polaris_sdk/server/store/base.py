"""The store plugin seam of the embedded server: records and the :class:`Store` protocol.

The naming service keeps every namespace, service and instance in a store
plugin. Records are frozen dataclasses, so a plugin hands out the very
objects it keeps and nobody can change them behind its back; a change is a
new record.

The instance record follows the real server's three instance tables: the
``instance`` row (identity, address, flags, revision, times), its
``health_check`` row (:class:`HealthCheckRecord`) and its ``instance_metadata``
rows (``metadata``). A SQLite plugin stores them as three tables; the memory
plugin keeps the record whole.

Contract every plugin keeps:

* Thread-safe: any method may be called from any thread.
* Short: no method blocks for long (callers run on the server's event loop).
* :meth:`Store.modify_instance` is atomic: the function it is given sees the
  current record and its result is stored before any other write to that
  instance, so read-modify-write (upsert keeping ``isolate``, a health flip
  guarded by the revision) never loses a concurrent change.
* A service's instance revision is :func:`service_revision` of its instances'
  revisions: SHA-1 of the sorted revisions, SHA-1("") for no instance. It
  changes exactly when an instance of the service is added, changed or removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "EMPTY_REVISION",
    "HealthCheckRecord",
    "InstanceRecord",
    "NamespaceRecord",
    "ServiceInstancesView",
    "ServiceRecord",
    "Store",
    "service_revision",
]

EMPTY_REVISION = hashlib.sha1(b"").hexdigest()
_NO_METADATA: Mapping[str, str] = MappingProxyType({})


def _frozen(metadata: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(metadata, MappingProxyType):
        return metadata
    return MappingProxyType(dict(metadata)) if metadata else _NO_METADATA


def service_revision(instance_revisions: Iterable[str]) -> str:
    """The revision of a service's instance set: stable for the same set, whatever the order."""
    digest = hashlib.sha1()
    for revision in sorted(instance_revisions):
        digest.update(revision.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    name: str
    comment: str = ""
    ctime: float = 0.0


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A service. ``revision`` changes when the service itself changes, not its instances."""

    namespace: str
    name: str
    id: str
    revision: str
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    comment: str = ""
    ctime: float = 0.0
    mtime: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen(self.metadata))


@dataclass(frozen=True, slots=True)
class HealthCheckRecord:
    """The ``health_check`` row: the check type (``v1.HealthCheck.HealthCheckType``) and TTL."""

    type: int
    ttl: int


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    id: str
    namespace: str
    service: str
    host: str
    port: int
    revision: str
    vpc_id: str = ""
    protocol: str = ""
    version: str = ""
    priority: int = 0
    weight: int = 100
    healthy: bool = True
    isolate: bool = False
    enable_health_check: bool = False
    health_check: HealthCheckRecord | None = None
    logic_set: str = ""
    region: str = ""
    zone: str = ""
    campus: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    ctime: float = 0.0
    mtime: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen(self.metadata))

    @property
    def heartbeat_ttl(self) -> int | None:
        """The heartbeat TTL when the instance is health-checked by heartbeat, else None."""
        if self.enable_health_check and self.health_check is not None:
            return self.health_check.ttl
        return None


@dataclass(frozen=True, slots=True)
class ServiceInstancesView:
    """A service with all its instances and their combined revision, read at one moment."""

    service: ServiceRecord
    revision: str
    instances: tuple[InstanceRecord, ...]


InstanceChange = Callable[[InstanceRecord | None], InstanceRecord | None]


class Store(Protocol):
    """What the naming service and the health checker need from a store plugin."""

    def add_namespace(self, namespace: NamespaceRecord) -> NamespaceRecord:
        """Create the namespace unless it exists; return the stored record."""
        ...

    def get_namespace(self, name: str) -> NamespaceRecord | None: ...

    def list_namespaces(self) -> list[NamespaceRecord]: ...

    def add_service(self, service: ServiceRecord) -> ServiceRecord:
        """Create the service (its namespace must exist) unless it exists; return the stored one.

        Raises LookupError when the namespace does not exist.
        """
        ...

    def get_service(self, namespace: str, name: str) -> ServiceRecord | None: ...

    def list_services(self, namespace: str | None = None) -> list[ServiceRecord]:
        """The services of ``namespace``, or of every namespace when it is None."""
        ...

    def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    def modify_instance(
        self, instance_id: str, change: InstanceChange
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        """Atomically replace the instance with ``change(current)``; return (old, new).

        ``change`` gets None when the instance does not exist; returning None
        leaves the store as it was (then ``new`` is ``old``). The new record's
        service must exist, else LookupError is raised and nothing changes.
        ``change`` must be quick and must not call the store.
        """
        ...

    def delete_instance(self, instance_id: str) -> InstanceRecord | None:
        """Remove the instance; return what was removed (None when there was nothing)."""
        ...

    def service_instances(self, namespace: str, name: str) -> ServiceInstancesView | None:
        """The service with its instances and revision; None when the service does not exist."""
        ...

    def health_checked_instances(self) -> list[InstanceRecord]:
        """Every instance whose health is checked by heartbeat."""
        ...

    def clear(self) -> None:
        """Remove every namespace, service and instance."""
        ...
