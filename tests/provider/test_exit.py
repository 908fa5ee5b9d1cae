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
from polaris_sdk.server.auth import Action
from tests.connector.servers import RecordingAuthorizer, address_of
from tests.faults.proxy import FaultProxy
from tests.provider.conftest import listed
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


def spawn(
    server: PolarisServer, transport: str, *argv: str, address: str | None = None, **env_vars: str
) -> subprocess.Popen[str]:
    env = {**os.environ, **env_vars}
    env["POLARIS_ADDRESSES"] = address or address_of(server, transport)
    env["POLARIS_PROTOCOL"] = transport
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
    server: PolarisServer,
    transport: str,
    observer: SDKContext,
    process_guard: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(
        server,
        transport,
        "examples/provider.py",
        "--service",
        "example",
        "--port",
        "9999",
        "--ttl",
        "1",
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
    server: PolarisServer,
    transport: str,
    observer: SDKContext,
    process_guard: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(server, transport, "-c", SCRIPT, "sigterm", "wait")
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
    server: PolarisServer,
    transport: str,
    observer: SDKContext,
    authorizer: RecordingAuthorizer,
    process_guard: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(server, transport, "-c", SCRIPT, "atexit", "return")
    process_guard.append(proc)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert listed(observer, "atexit") == {}
    assert registered_then_deregistered(authorizer, "atexit"), output


def registered_then_deregistered(authorizer: RecordingAuthorizer, service: str) -> bool:
    seen = [r.action for r in authorizer.actions(service=service)]
    wanted = [a for a in seen if a in (Action.REGISTER, Action.DEREGISTER)]
    return wanted == [Action.REGISTER, Action.DEREGISTER]


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from polaris_sdk import ProviderAPI

    def previous(signum, frame):
        left = len(provider.registrations())
        print(f"previous handler on {threading.current_thread().name}, {left} left", flush=True)
        sys.exit(3)

    if sys.argv[2] == "previous":
        signal.signal(signal.SIGTERM, previous)
    provider = ProviderAPI.create()
    provider.register_instance(service=sys.argv[1], host="127.0.0.1", port=1, ttl=1)
    provider.deregister_on_exit()
    # The signal lands while this thread holds the lock the flow's calls take.
    with provider._flow._lock:
        os.kill(os.getpid(), signal.SIGTERM)
        print("handler returned", flush=True)
    threading.Event().wait()
    """
)


def test_sigterm_while_the_main_thread_holds_a_flow_lock_still_deregisters(
    server: PolarisServer,
    authorizer: RecordingAuthorizer,
    process_guard: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(server, "grpc", "-c", SIGNAL_SCRIPT, "locked", "default")
    process_guard.append(proc)
    output, _ = proc.communicate(timeout=30)
    assert "handler returned" in output, output
    assert proc.returncode == -signal.SIGTERM, output
    assert registered_then_deregistered(authorizer, "locked"), output


def test_the_previous_handler_runs_on_the_main_thread_after_close(
    server: PolarisServer,
    authorizer: RecordingAuthorizer,
    process_guard: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(server, "grpc", "-c", SIGNAL_SCRIPT, "chained", "previous")
    process_guard.append(proc)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3, output
    assert "previous handler on MainThread, 0 left" in output, output
    assert registered_then_deregistered(authorizer, "chained"), output


SLOW_REGISTER = textwrap.dedent(
    """
    import sys, threading
    from polaris_sdk import ProviderAPI, SDKContext
    if sys.argv[2] == "owned":
        provider = ProviderAPI.create()
    else:  # a facade on a context of the application's
        provider = ProviderAPI(SDKContext.create())
    provider.deregister_on_exit()
    print("registering", flush=True)
    provider.register_instance(service=sys.argv[1], host="127.0.0.1", port=1, ttl=1)
    print("registered", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("context", ["owned", "shared"])
def test_sigterm_while_registering_ends_deregistered(
    server: PolarisServer,
    transport: str,
    observer: SDKContext,
    authorizer: RecordingAuthorizer,
    process_guard: list[subprocess.Popen[str]],
    context: str,
) -> None:
    """The register is on the wire (held by a slow network) when SIGTERM comes: close()
    waits for it, bounded, and deregisters the instance before the process ends."""
    service = f"slow-{context}"
    host, port = address_of(server, transport).rsplit(":", 1)
    with FaultProxy((host, int(port))) as proxy:
        proxy.delay(up=1.5)  # each request reaches the server 1.5 s after it is sent
        proc = spawn(
            server,
            transport,
            *("-c", SLOW_REGISTER, service, context),
            address=proxy.address,
            POLARIS_MESSAGE_TIMEOUT="5s",  # a slow network, not a failed attempt
            POLARIS_API_TIMEOUT="6s",
        )
        process_guard.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "registering", proc.communicate()[0]
        wait_until(lambda: proxy.stats().requests >= 1, timeout=10)  # sent, not arrived
        assert authorizer.actions(service=service) == []
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM, output
        assert "registered\n" not in output
        # It landed after the signal (had the process ended first, it would still
        # land, and stay), and was taken off again before the process ended.
        wait_until(lambda: authorizer.actions(Action.REGISTER, service), timeout=10)
        assert registered_then_deregistered(authorizer, service), output
        assert listed(observer, service) == {}
        assert proxy.errors == []
