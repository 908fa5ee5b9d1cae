"""Prefork workers sharing one instance, as gunicorn --preload runs them (run by a test).

Usage: ``python -m tests.procs.workers ADDRESS SERVICE WORKERS LEASE_DIR``. The
parent makes a ProviderAPI (as an application imported before the fork
would), then forks WORKERS processes with multiprocessing. Each registers
127.0.0.1:7100 with TTL 1 s through the inherited provider, closes on
SIGTERM, prints its pid, and waits.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys

from polaris_sdk import ProviderAPI

ADDRESS, SERVICE, WORKERS, LEASE_DIR = sys.argv[1:5]


def serve(provider: ProviderAPI) -> None:
    provider.register_instance(service=SERVICE, host="127.0.0.1", port=7100, ttl=1)
    provider.deregister_on_exit()
    # One write per line, so the workers' lines never interleave in the pipe.
    sys.stdout.write(f"{multiprocessing.current_process().pid}\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    provider = ProviderAPI.create(addresses=[ADDRESS], **{"provider.leaseDir": LEASE_DIR})
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=serve, args=(provider,)) for _ in range(int(WORKERS))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
