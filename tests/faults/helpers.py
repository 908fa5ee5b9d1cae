"""What the fault scenarios look at: the server's records, the process's threads and sockets."""

from __future__ import annotations

import os
import threading

from polaris_sdk import ServiceInstances
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.store.base import InstanceRecord


def record(server: PolarisServer, instance_id: str) -> InstanceRecord | None:
    """The server's record of an instance (None when it has none)."""
    return server.naming.store.get_instance(instance_id)


def healthy_on_server(server: PolarisServer, instance_id: str) -> bool:
    found = record(server, instance_id)
    return found is not None and found.healthy


def ids(snapshot: ServiceInstances) -> set[str]:
    return {instance.id for instance in snapshot}


def healthy_ids(snapshot: ServiceInstances) -> set[str]:
    return {instance.id for instance in snapshot if instance.healthy}


def thread_count() -> int:
    return threading.active_count()


def open_fds() -> tuple[int, int]:
    """(open file descriptors, of which sockets) of this process, from /proc/self/fd."""
    fds = sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed while we looked (or the listing's own descriptor)
            continue
        fds += 1
        sockets += target.startswith("socket:")
    return fds, sockets
