"""Fork safety: a child forked from a process using the SDK starts clean (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polaris_sdk.testing import PolarisTestServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("front", ["sync", "async"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_forked_child_starts_clean(
    own_server: PolarisTestServer, protocol: str, front: str
) -> None:
    service = f"fork-{protocol}-{front}"
    address = own_server.addresses(protocol)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.procs.fork_child", address, protocol, front, service],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        # The child lists and registers on channels and a pool of its own...
        assert ready == {
            "ready": True,
            "seen": 1,
            "inherited": 0,
            "first_call": ready["first_call"],
        }
        assert ready["first_call"] < 3.0
        # ...and never heartbeats the parent's instance: with the parent gone
        # quiet it turns unhealthy, while the child's own stays healthy.
        unhealthy = own_server.wait_for_instances(service, 1, healthy=False, timeout=15)
        assert unhealthy[0].port == 7001
        assert [i.port for i in own_server.instances(service) if i.healthy] == [7002]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        closed = json.loads(proc.stdout.readline() or "{}")
        assert closed.get("closed", 99) < 3.0
        assert proc.wait(timeout=10) == 0
        # The child's close deregistered its own instance, not the parent's.
        assert [i.port for i in own_server.instances(service)] == [7001]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
