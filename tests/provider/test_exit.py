"""Leaving processes: the example on Ctrl-C, deregister_on_exit on SIGTERM and at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from polaris_sdk import SDKContext
from polaris_sdk.server import PolarisServer
from tests.provider.conftest import listed
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


def spawn(server: PolarisServer, *argv: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["POLARIS_ADDRESSES"] = server.grpc_address
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def process_guard() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_example_registers_and_deregisters_on_ctrl_c(
    server: PolarisServer, observer: SDKContext, process_guard: list[subprocess.Popen[str]]
) -> None:
    proc = spawn(
        server, "examples/provider.py", "--service", "example", "--port", "9999", "--ttl", "1"
    )
    process_guard.append(proc)
    wait_until(lambda: listed(observer, "example") or proc.poll() is not None, timeout=30)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "registered" in output and "deregistered" in output
    assert listed(observer, "example") == {}


SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from polaris_sdk import ProviderAPI
    provider = ProviderAPI.create()
    provider.register_instance(service=sys.argv[1], host="127.0.0.1", port=1, ttl=1)
    provider.deregister_on_exit()
    print("ready", flush=True)
    if sys.argv[2] == "wait":
        threading.Event().wait()
    """
)


def test_deregister_on_exit_handles_sigterm(
    server: PolarisServer, observer: SDKContext, process_guard: list[subprocess.Popen[str]]
) -> None:
    proc = spawn(server, "-c", SCRIPT, "sigterm", "wait")
    process_guard.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the handler is installed once "ready" is printed
    assert line.strip() == "ready", line + proc.communicate()[0]
    assert listed(observer, "sigterm")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    # The default SIGTERM behaviour still ends the process, after deregistering.
    assert proc.returncode == -signal.SIGTERM, output
    assert listed(observer, "sigterm") == {}


def test_deregister_on_exit_at_interpreter_exit(
    server: PolarisServer, observer: SDKContext, process_guard: list[subprocess.Popen[str]]
) -> None:
    proc = spawn(server, "-c", SCRIPT, "atexit", "return")
    process_guard.append(proc)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert listed(observer, "atexit") == {}
    # It was registered: the server knows the service it created.
    assert server.naming is not None
