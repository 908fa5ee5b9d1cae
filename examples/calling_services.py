"""Call services by name: httpx through PolarisTransport, gRPC through a Polaris channel.

Starts the embedded server and greeter processes (examples/greeter.py), calls
them by service name, kills one of each kind with SIGKILL and keeps calling:
the circuit breaker takes the dead instance out and the unsent request is
retried on another one, so no call fails.

    python examples/calling_services.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx

from polaris_sdk import CircuitBreakerEvent, ConsumerAPI
from polaris_sdk.integrations.grpc import channel
from polaris_sdk.integrations.httpx import PolarisTransport
from polaris_sdk.server import PolarisServer

GREETER = Path(__file__).resolve().parent / "greeter.py"


def start_greeters(server: PolarisServer, kind: str, service: str) -> list[subprocess.Popen[str]]:
    argv = [sys.executable, str(GREETER), "--polaris", server.grpc_address]
    procs = [
        subprocess.Popen(
            [*argv, "--kind", kind, "--service", service], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "READY <port>" once serving and registered
        assert line.startswith("READY"), line
    return procs


def on_breaker(event: CircuitBreakerEvent) -> None:
    print(f"breaker {event.service} {event.resource}: {event.new_state} ({event.reason})")


def main() -> None:
    with PolarisServer(grpc_port=0) as server:
        procs = start_greeters(server, "http", "greeter") + start_greeters(
            server, "grpc", "greeter-grpc"
        )
        try:
            with ConsumerAPI.create(addresses=[server.grpc_address]) as consumer:
                consumer.add_circuit_breaker_listener(on_breaker)
                run(consumer, procs)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                proc.wait(timeout=15)
    print("done")


def run(consumer: ConsumerAPI, procs: list[subprocess.Popen[str]]) -> None:
    while len(consumer.get_instances(service="greeter")) < 3 or (
        len(consumer.get_instances(service="greeter-grpc")) < 3
    ):
        time.sleep(0.05)
    with (
        httpx.Client(transport=PolarisTransport(consumer), timeout=5) as client,
        channel("greeter-grpc", consumer=consumer) as grpc_channel,
    ):
        say_hello = grpc_channel.unary_unary("/greeter.Greeter/SayHello")
        failures = 0
        for i in range(40):
            if i == 10:
                # One HTTP and one gRPC greeter die between two calls; a call
                # already on the wire when a server dies is a failure no client
                # can hide, so the kill lands once both are gone.
                for dead in (procs[0], procs[3]):
                    os.kill(dead.pid, signal.SIGKILL)
                    dead.wait(timeout=10)
            try:
                client.get("http://greeter/hello").raise_for_status()
                say_hello(b"hi", timeout=5)
            except (httpx.HTTPError, grpc.RpcError) as exc:
                failures += 1
                print(f"call failed: {exc}")
            time.sleep(0.05)
        print(f"http: {client.get('http://greeter/hello').text}")
        print(f"grpc: {say_hello(b'hi', timeout=5).decode()}")
        print(f"failed calls: {failures}")


if __name__ == "__main__":
    main()
