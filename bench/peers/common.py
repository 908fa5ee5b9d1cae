"""What the three peer-comparison workers share (standard library only).

A worker is a process that ``run.py`` starts for one measurement; it runs in
the project's virtual environment (polaris_sdk) or in ``bench/peers/.venv``
(etcd and ZooKeeper clients), so this module imports nothing else.

Protocol with ``run.py``: a worker writes one line per message on stdout,
``@<kind> <json>`` (``@ready``, ``@result``); logs go to stderr. Long-lived
workers (``keep``, ``watch``) then read commands from stdin, one per line, and
end on ``stop`` or end-of-file, so closing their stdin always stops them.

Every wait here has a deadline; nothing retries forever.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

SERVICE_METADATA = {"env": "prod", "zone": "zone-a"}
HOST = "127.0.0.1"


# ---------------------------------------------------------------- messages


def emit(kind: str, payload: dict[str, Any] | None = None) -> None:
    print(f"@{kind} {json.dumps(payload or {})}", flush=True)


def command() -> str:
    """The next command from run.py; "stop" at end-of-file."""
    line = sys.stdin.readline()
    return line.strip() or "stop"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- figures


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def calls_per_second(fn: Callable[[], object], budget: float, rounds: int = 3) -> float:
    """The best of ``rounds`` windows sharing ``budget`` seconds, batches of 1,000
    calls, so a burst of other work on the machine does not decide the figure."""
    for _ in range(1000):
        fn()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        deadline = start + budget / rounds
        calls = 0
        now = start
        while now < deadline:
            for _ in range(1000):
                fn()
            calls += 1000
            now = time.perf_counter()
        best = max(best, calls / (now - start))
    return best


def moments(count: int, window: float, seed: int) -> list[float]:
    """``count`` sorted offsets spread at random over ``window`` seconds."""
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, window) for _ in range(count))


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll until ``predicate()`` is true; False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def instance_value(port: int) -> dict[str, Any]:
    """What every registry stores per instance: the fields a Polaris instance has."""
    return {
        "host": HOST,
        "port": port,
        "protocol": "grpc",
        "version": "1.4.2",
        "weight": 100,
        "metadata": SERVICE_METADATA,
    }


def instance_name(port: int) -> str:
    return f"{HOST}:{port}"


# ---------------------------------------------------------------- children


class Child:
    """A provider process this worker starts for the failure-detection section.

    It shares the worker's process group, so when run.py stops a worker that
    ran out of time, the provider goes with it.
    """

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="polaris-bench-child", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no @{kind} from the provider in {timeout:.0f} s") from None
            if line is None:
                raise RuntimeError(f"the provider exited before @{kind}")
            if line.startswith(f"@{kind} "):
                return dict(json.loads(line.split(" ", 1)[1]))

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)


def provider_argv(script: str, args: list[str]) -> list[str]:
    return [sys.executable, script, *args]


def run_detection(
    *,
    label: str,
    samples: int,
    spawn: Callable[[int], Child],
    visible: Callable[[int], bool],
    kill_after: Callable[[], float],
    bound: float,
    first_port: int,
) -> dict[str, Any]:
    """Kill ``samples`` providers with SIGKILL, one at a time, and time how long
    the consumer (``visible``) keeps returning each. A sample that is still
    visible after ``bound`` seconds is recorded as ``bound`` and flagged; a
    sample whose provider never came up is logged and counted as failed (the
    next one still runs), and if none succeeds the whole measurement fails."""

    def gone(port: int) -> bool:
        return not visible(port)

    times: list[float] = []
    censored = failed = 0
    rng = random.Random(samples * 7919 + first_port)
    for n in range(samples):
        port = first_port + n
        child = spawn(port)
        try:
            child.expect("ready", 60)
            if not poll(functools.partial(visible, port), 30):
                raise RuntimeError(f"the consumer never saw instance {port}")
            # A random moment of the keep-alive cycle, as a crash would be.
            time.sleep(kill_after() * rng.random() + 0.2)
            child.kill()
            killed = time.perf_counter()
            if poll(functools.partial(gone, port), bound, 0.01):
                times.append(time.perf_counter() - killed)
            else:
                times.append(bound)
                censored += 1
        except (RuntimeError, TimeoutError) as err:
            failed += 1
            log(f"{label}: sample {n + 1}/{samples} failed: {err}")
            continue
        finally:
            child.kill()
        log(f"{label}: sample {n + 1}/{samples}: {times[-1]:.2f} s")
    if not times:
        raise RuntimeError(f"{label}: every sample failed")
    return {"seconds": times, "censored": censored, "failed": failed}


# ---------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("mode", choices=["rtt", "propagation", "provider", "detect", "keep", "watch"])
    p.add_argument("--target", required=True, help="host:port of the registry")
    p.add_argument("--prefix", default="bench", help="service name (path prefix) to use")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--window", type=float, default=10.0, help="seconds to spread work over")
    p.add_argument("--ttl", type=float, default=5.0, help="TTL / lease / session timeout, s")
    p.add_argument("--refresh", type=float, default=2.0, help="polaris_sdk refresh interval, s")
    p.add_argument("--port", type=int, default=30000, help="provider port (provider mode)")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--budget", type=float, default=1.5, help="seconds per selection figure")
    p.add_argument("--shared-lease", action="store_true", help="etcd: one lease for all keys")
    p.add_argument("--seed", type=int, default=1)
    return p


def check_bounds(args: argparse.Namespace) -> None:
    """Every loop a worker runs is bounded by these."""
    if not 1 <= args.count <= 10_000:
        raise SystemExit("--count must be from 1 to 10000")
    if not 0 < args.window <= 300:
        raise SystemExit("--window must be from 0 to 300 seconds")
    if not 1 <= args.samples <= 50:
        raise SystemExit("--samples must be from 1 to 50")
    if not 0 < args.ttl <= 60:
        raise SystemExit("--ttl must be from 0 to 60 seconds")
    host = args.target.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]") and not host.startswith("127."):
        raise SystemExit("--target must be a loopback address")
