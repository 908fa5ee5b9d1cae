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


POOLED_THREADS = ("polaris-worker_", "polaris-listener-", "polaris-status-")
"""Name prefixes of the threads of bounded pools: the SDK scheduler's workers and
the listener and status dispatchers. A pool starts a
thread when all of its threads are busy, up to its bound, and keeps it for a
while (a ThreadPoolExecutor for good), so their number follows how busy the
process has been, not whether anything leaks."""


def thread_count() -> int:
    return threading.active_count()


def unpooled_thread_count() -> int:
    """Threads outside the bounded pools: where a leak of a thread per reconnect would show."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith(POOLED_THREADS))


def pooled_thread_counts() -> dict[str, int]:
    """Threads of each bounded pool, by name prefix."""
    names = [t.name for t in threading.enumerate()]
    return {prefix: sum(1 for n in names if n.startswith(prefix)) for prefix in POOLED_THREADS}


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
