"""The sample apps deployed as real processes: prefork workers, graceful stops, faults.

A registry (``python -m polaris_sdk.server``), three instances of one
service (examples/fastapi_provider.py under ``uvicorn --workers 2`` twice,
examples/flask_provider.py under ``gunicorn -w 2``) and
examples/greeter_consumer.py at a steady rate. The consumer's
failed requests are counted per event; a worker recycle, a graceful stop
and a registry restart must fail none. An event's window opens as the event
starts and closes only after requests made once it is over; the next one
opens after a run of successful requests. Short TTL and refresh through
``POLARIS_*`` keep it brief. The counts are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs.servers import BIN, ROOT, children, free_port, workers
from tests.support import wait_until

SERVICE = "greeter-deploy"
TTL = 1
STREAK = 20
"""Requests in a row that must succeed, all made after an event, before it counts as over."""
RESULTS: dict[str, int] = {}


class Consumer:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "examples/greeter_consumer.py"],
            cwd=ROOT,
            env={**env, "GREETER_RATE": "20"},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.results: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.results.append(json.loads(line))

    def since(self, t: float) -> list[dict[str, Any]]:
        """The results of the requests started at ``t`` or later."""
        return [r for r in list(self.results) if r["t"] >= t]

    def failed_since(self, t: float) -> int:
        return sum(1 for r in self.since(t) if not r["ok"])

    def settled_since(self, t: float, n: int = STREAK) -> bool:
        """The last ``n`` requests were all made after ``t`` and all succeeded."""
        recent = self.since(t)[-n:]
        return len(recent) == n and all(r["ok"] for r in recent)

    def ports_since(self, t: float) -> set[int]:
        return {r["port"] for r in self.since(t) if r.get("port")}

    def settle(self, t: float) -> float:
        """Wait until the requests made after ``t`` end in a run of successes; the time then."""
        wait_until(lambda: self.settled_since(t), timeout=30, message="failures go on")
        return time.time()

    def wait_for(self, t: float, n: int, span: float = 0.0) -> None:
        """Wait until ``n`` requests were made after ``t``, the last over ``span`` s after it."""
        wait_until(
            lambda: len(found := self.since(t)) >= n and found[-1]["t"] - t > span, timeout=30
        )


def registry_health(http_port: int) -> dict[int, bool]:
    """Port -> healthy of the service's instances, read from the registry's admin API."""
    answer = httpx.get(
        f"http://127.0.0.1:{http_port}/naming/v1/instances",
        params={"namespace": "default", "service": SERVICE},
        timeout=5,
        trust_env=False,
    )
    answer.raise_for_status()
    return {i["port"]: i["healthy"] for i in answer.json()["instances"]}


def serving(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "POLARIS_ADDRESSES": f"127.0.0.1:{grpc_port}",
        "POLARIS_HEARTBEAT_TTL": str(TTL),
        "POLARIS_REFRESH_INTERVAL": "0.5s",
        "POLARIS_DRAIN": "1.5",
        "POLARIS_INSTANCE_HOST": "127.0.0.1",
        "POLARIS_LEASE_DIR": str(tmp_path / "leases"),
        "GREETER_SERVICE": SERVICE,
    }
    registry_cmd = [sys.executable, "-m", "polaris_sdk.server", "--grpc-port", str(grpc_port)]
    registry_cmd += ["--http-port", str(http_port), "--data-dir", str(tmp_path / "data")]
    registry_cmd += ["--health-check-interval", "0.5"]
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        return procs[name]

    ports = {"a": free_port(), "b": free_port(), "c": free_port()}
    uvicorn = [str(BIN / "uvicorn"), "examples.fastapi_provider:app", "--workers", "2"]
    uvicorn += ["--host", "127.0.0.1", "--log-level", "warning"]
    gunicorn = [str(BIN / "gunicorn"), "-w", "2", "examples.flask_provider:app"]
    try:
        start("registry", registry_cmd)
        start("a", [*uvicorn, "--port", str(ports["a"])])
        start("b", [*gunicorn, "-b", f"127.0.0.1:{ports['b']}"])
        start("c", [*uvicorn, "--port", str(ports["c"])])
        yield {
            "env": env,
            "ports": ports,
            "procs": procs,
            "start": start,
            "registry": registry_cmd,
            "http_port": http_port,
        }
    finally:
        for proc in procs.values():
            for pid in children(proc.pid):
                with_kill(pid)
            with_kill(proc.pid)
            proc.wait(timeout=20)


def with_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_sample_apps_under_prefork_servers(deployment: dict[str, Any]) -> None:
    env, ports, procs = deployment["env"], deployment["ports"], deployment["procs"]
    http_port = deployment["http_port"]
    consumer = Consumer(env)
    try:
        started = time.time()
        wait_until(
            lambda: (
                consumer.ports_since(started) == set(ports.values())
                and consumer.settled_since(started)
            ),
            timeout=60,
            message="the consumer never reached all three instances",
        )

        # 1. A worker recycle in each server: the instance stays, no request fails.
        t = time.time()
        for name in ("a", "b"):
            worker = workers(procs[name].pid)[0]
            os.kill(worker, signal.SIGTERM)
            wait_until(
                lambda n=name, w=worker: (
                    len(workers(procs[n].pid)) == 2 and w not in workers(procs[n].pid)
                ),
                timeout=30,
                message=f"{name}: worker not replaced",
            )
        t2 = time.time()
        consumer.wait_for(t2, 40)
        RESULTS["worker recycle"] = consumer.failed_since(t)
        assert consumer.ports_since(t2) == set(ports.values())

        # 2. A graceful stop of a whole instance (gunicorn master, SIGTERM).
        t = consumer.settle(t2)
        procs["b"].send_signal(signal.SIGTERM)
        procs["b"].wait(timeout=30)
        t2 = time.time()
        consumer.wait_for(t2, 30)
        RESULTS["graceful stop"] = consumer.failed_since(t)
        assert ports["b"] not in consumer.ports_since(t2 + 0.5)
        assert ports["b"] not in registry_health(http_port)

        # 3. kill -9 of a whole instance that is taking requests: the consumer
        # does not retry, so each pick of it fails until the registry marks it
        # unhealthy (no beat for 3 x TTL) and the consumer's next refresh
        # drops it. How many that is depends on timing: recorded, not asserted.
        served = consumer.settle(t2)
        wait_until(
            lambda: ports["c"] in {r.get("port") for r in consumer.since(served) if r["ok"]},
            timeout=30,
            message="c served nothing before the kill",
        )
        t = time.time()
        for pid in [*children(procs["c"].pid), procs["c"].pid]:
            os.kill(pid, signal.SIGKILL)
        procs["c"].wait(timeout=10)
        wait_until(lambda: not serving(ports["c"]), timeout=10, message="c still serves")
        killed = time.time()
        wait_until(
            lambda: registry_health(http_port).get(ports["c"]) is False,
            timeout=30,
            interval=0.1,
            message="the registry never marked c unhealthy",
        )
        settled = consumer.settle(time.time())
        consumer.wait_for(settled, STREAK)
        RESULTS["kill -9"] = consumer.failed_since(t)
        # Only picks of c failed, and once c was gone every pick of it did:
        # a dead instance costs its own share of the traffic, nothing more.
        assert {r.get("port") for r in consumer.since(t) if not r["ok"]} <= {ports["c"]}
        assert all(not r["ok"] for r in consumer.since(killed) if r.get("port") == ports["c"])
        assert ports["c"] not in consumer.ports_since(settled)

        # 4. A registry restart (same ports, data kept) with one healthy
        # instance (a) and one unhealthy (c, dead). The window covers the
        # restarted registry's first health checks (3 x TTL after it starts):
        # a keeps beating so it stays healthy, and c's health is kept on disk.
        t = time.time()
        procs["registry"].send_signal(signal.SIGTERM)
        procs["registry"].wait(timeout=20)
        deployment["start"]("registry", deployment["registry"])
        wait_until(lambda: serving(http_port), timeout=30, message="the registry did not restart")
        restarted = time.time()
        consumer.wait_for(restarted, 60, span=3 * TTL + 1.5)
        RESULTS["registry restart"] = consumer.failed_since(t)
        assert registry_health(http_port) == {ports["a"]: True, ports["c"]: False}
        assert consumer.ports_since(restarted) == {ports["a"]}
    finally:
        consumer.proc.send_signal(signal.SIGTERM)
        consumer.proc.wait(timeout=20)
        print("failed requests per event:", json.dumps(RESULTS))
    assert RESULTS["worker recycle"] == 0, RESULTS
    assert RESULTS["graceful stop"] == 0, RESULTS
    assert RESULTS["registry restart"] == 0, RESULTS
