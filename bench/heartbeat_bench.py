"""Heartbeat cost: N instances at TTL 5 s kept alive through one ProviderAPI.

For each size, registers N instances through one ProviderAPI (one context,
one scheduler, default settings) against an embedded server running in a
separate process, then watches the heartbeats for a bounded window and
reports:

* lateness p50 / p99 / max: how long after its due time each heartbeat was
  sent (due times are the registration time plus k x TTL, the fixed rate the
  flow promises);
* beats: heartbeats sent in the window, and how many failed;
* SDK CPU: CPU time of this process (all its threads) over wall time in the
  window, as a share of one core; the server's CPU is not counted;
* threads: threads alive in this process during the window;
* healthy: instances the server lists as healthy at the end.

Loopback only; every run is bounded by ``--duration``.

    .venv/bin/python bench/heartbeat_bench.py [--sizes 100 1000 5000] [--duration 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polaris_sdk import (  # noqa: E402
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    ProviderAPI,
    ServiceKey,
)

TTL = 5


@dataclass
class Result:
    size: int
    duration: float
    beats: int
    failures: int
    p50: float
    p99: float
    worst: float
    cpu_share: float
    threads: int
    healthy: int
    register_seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process() -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polaris_sdk.server",
            "--grpc-port",
            str(port),
            # The HTTP API is not used; port 0 keeps it off the default 8090.
            "--http-port",
            "0",
            "--log-level",
            "WARNING",
            "--health-check-interval",
            "1",
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server process did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(address: str, size: int, duration: float, workers: int) -> Result:
    service = f"bench-{size}"
    sent: dict[str, list[float]] = {}
    failures = 0
    lock = threading.Lock()
    settings = {"global.scheduler.workers": workers}
    with ProviderAPI.create(addresses=[address], **settings) as provider:
        connector: Any = provider.context.connector
        real_heartbeat = connector.heartbeat

        def timed_heartbeat(req: InstanceHeartbeatRequest, **kw: Any) -> None:
            nonlocal failures
            at = time.monotonic()
            with lock:
                sent.setdefault(req.instance_id or "", []).append(at)
            try:
                real_heartbeat(req, **kw)
            except Exception:
                with lock:
                    failures += 1
                raise

        connector.heartbeat = timed_heartbeat
        registered: dict[str, float] = {}
        started = time.monotonic()
        for i in range(size):
            resp = provider.register_instance(
                InstanceRegisterRequest(service=service, host="127.0.0.1", port=20000 + i, ttl=TTL)
            )
            registered[resp.instance_id] = time.monotonic()
        register_seconds = time.monotonic() - started

        with lock:
            sent.clear()
            failures = 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        threads = 0
        end = wall0 + duration
        while time.monotonic() < end:
            threads = max(threads, threading.active_count())
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        cpu1, wall1 = time.process_time(), time.monotonic()
        with lock:
            window = {k: list(v) for k, v in sent.items()}
            failed = failures

        lateness: list[float] = []
        for iid, times in window.items():
            base = registered[iid]
            for at in times:
                k = max(1, round((at - base) / TTL))
                lateness.append(at - (base + k * TTL))
        snapshot = provider.context.connector.discover_instances(ServiceKey("default", service))
        healthy = sum(1 for i in snapshot or () if i.healthy)

    return Result(
        size=size,
        duration=wall1 - wall0,
        beats=sum(len(v) for v in window.values()),
        failures=failed,
        p50=percentile(lateness, 0.50),
        p99=percentile(lateness, 0.99),
        worst=max(lateness, default=float("nan")),
        cpu_share=(cpu1 - cpu0) / (wall1 - wall0),
        threads=threads,
        healthy=healthy,
        register_seconds=register_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds watched per size")
    parser.add_argument("--workers", type=int, default=8, help="global.scheduler.workers")
    args = parser.parse_args()
    if not 1 <= args.duration <= 300:
        parser.error("--duration must be from 1 to 300 seconds")
    if any(not 1 <= n <= 10000 for n in args.sizes):
        parser.error("sizes must be from 1 to 10000")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(
        f"python {platform.python_version()}, TTL {TTL}s, window {args.duration:.0f}s per size, "
        f"{args.workers} scheduler workers"
    )
    print()
    print(
        "| instances | beats | failed | lateness p50 | p99 | max "
        "| SDK CPU (one core) | threads | healthy | register all |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        # A fresh server per size, so earlier instances do not load the next run.
        with server_process() as address:
            r = run(address, size, args.duration, args.workers)
        print(
            f"| {r.size} | {r.beats} | {r.failures} | {r.p50 * 1000:.1f} ms "
            f"| {r.p99 * 1000:.1f} ms | {r.worst * 1000:.1f} ms | {r.cpu_share:.1%} "
            f"| {r.threads} | {r.healthy}/{r.size} | {r.register_seconds:.1f} s |",
            flush=True,
        )
    print()
    print("mean beats/s expected at TTL 5:", ", ".join(f"{n}: {n / TTL:.0f}" for n in args.sizes))


if __name__ == "__main__":
    main()
