"""The memory store plugin: everything in dictionaries, guarded by one lock.

Thread-safe; every method holds the lock for a dictionary operation or two,
except :meth:`MemoryStore.service_instances`, which after a change rebuilds
the service's view (its instances sorted by id and their revision) once and
then serves that cached, immutable view until the next change to the
service. Nothing survives the process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from polaris_sdk.server.store.base import (
    InstanceChange,
    InstanceRecord,
    NamespaceRecord,
    ServiceInstancesView,
    ServiceRecord,
    service_revision,
)

__all__ = ["MemoryStore"]

_ServiceKey = tuple[str, str]


@dataclass(slots=True)
class _ServiceSlot:
    record: ServiceRecord
    instance_ids: set[str] = field(default_factory=set)
    view: ServiceInstancesView | None = None


class MemoryStore:
    """A :class:`~polaris_sdk.server.store.base.Store` kept in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, NamespaceRecord] = {}
        self._services: dict[_ServiceKey, _ServiceSlot] = {}
        self._instances: dict[str, InstanceRecord] = {}

    # ----------------------------------------------------------- namespaces

    def add_namespace(self, namespace: NamespaceRecord) -> NamespaceRecord:
        with self._lock:
            return self._namespaces.setdefault(namespace.name, namespace)

    def get_namespace(self, name: str) -> NamespaceRecord | None:
        with self._lock:
            return self._namespaces.get(name)

    def list_namespaces(self) -> list[NamespaceRecord]:
        with self._lock:
            return sorted(self._namespaces.values(), key=lambda n: n.name)

    # ------------------------------------------------------------- services

    def add_service(self, service: ServiceRecord) -> ServiceRecord:
        key = (service.namespace, service.name)
        with self._lock:
            if service.namespace not in self._namespaces:
                raise LookupError(f"namespace {service.namespace!r} does not exist")
            slot = self._services.get(key)
            if slot is None:
                slot = self._services[key] = _ServiceSlot(service)
            return slot.record

    def get_service(self, namespace: str, name: str) -> ServiceRecord | None:
        with self._lock:
            slot = self._services.get((namespace, name))
            return slot.record if slot else None

    def list_services(self, namespace: str | None = None) -> list[ServiceRecord]:
        with self._lock:
            records = [
                s.record
                for (ns, _), s in self._services.items()
                if namespace is None or ns == namespace
            ]
        return sorted(records, key=lambda s: (s.namespace, s.name))

    # ------------------------------------------------------------ instances

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self._instances.get(instance_id)

    def modify_instance(
        self, instance_id: str, change: InstanceChange
    ) -> tuple[InstanceRecord | None, InstanceRecord | None]:
        with self._lock:
            old = self._instances.get(instance_id)
            new = change(old)
            if new is None:
                return old, old
            new_slot = self._services.get((new.namespace, new.service))
            if new_slot is None:
                raise LookupError(f"service {new.namespace}/{new.service} does not exist")
            if old is not None:
                self._detach(old)
            self._instances[instance_id] = new
            new_slot.instance_ids.add(instance_id)
            new_slot.view = None
            return old, new

    def delete_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            old = self._instances.pop(instance_id, None)
            if old is not None:
                self._detach(old)
            return old

    def _detach(self, record: InstanceRecord) -> None:
        slot = self._services.get((record.namespace, record.service))
        if slot is not None:
            slot.instance_ids.discard(record.id)
            slot.view = None

    def service_instances(self, namespace: str, name: str) -> ServiceInstancesView | None:
        with self._lock:
            slot = self._services.get((namespace, name))
            if slot is None:
                return None
            if slot.view is None:
                instances = tuple(self._instances[i] for i in sorted(slot.instance_ids))
                slot.view = ServiceInstancesView(
                    service=slot.record,
                    revision=service_revision(i.revision for i in instances),
                    instances=instances,
                )
            return slot.view

    def health_checked_instances(self) -> list[InstanceRecord]:
        with self._lock:
            return [i for i in self._instances.values() if i.heartbeat_ttl is not None]

    def clear(self) -> None:
        with self._lock:
            self._namespaces.clear()
            self._services.clear()
            self._instances.clear()
