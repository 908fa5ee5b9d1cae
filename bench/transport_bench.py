"""HTTP vs gRPC: register and discover throughput of the embedded server on each API.

The server runs in its own process (``python -m polaris_sdk.server``);
clients run in separate processes (threads inside, one connection each).
gRPC clients use the official stubs (Discover on an open stream); HTTP
clients use httpx with keep-alive, posting the same messages as JSON, as
the SDK's HTTP transport does. Besides operations per second, the server's
own CPU time per operation is read from /proc, which is steadier than
throughput when the clients share the machine. Everything talks over
loopback and every loop is bounded by a deadline and an operation cap.

    .venv/bin/python bench/transport_bench.py                 # print the table
    .venv/bin/python bench/transport_bench.py --write-readme  # record it in bench/README.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import cpu_model as _cpu_model
from _report import load as _load
from _report import paragraph as _paragraph
from _report import write_section

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
HEADING = "## HTTP vs gRPC (bench/transport_bench.py)"
TRANSPORTS = ("grpc", "http")
OPERATIONS = ("register", "discover unchanged", "discover 10 instances")
MAX_OPS_PER_CLIENT = 200_000
CALL_TIMEOUT = 10.0
SERVICE = "bench-transport"
REGISTER_SERVICE = "bench-transport-register"
PREPARED = 10

Op = Callable[[], None]


# ------------------------------------------------------------------ clients


def _instance_json(host: str, port: int, service: str = SERVICE) -> dict[str, Any]:
    return {
        "namespace": "default",
        "service": service,
        "host": host,
        "port": port,
        "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 60}},
    }


def _check(what: str, code: int, *expected: int) -> None:
    if code not in expected:
        raise RuntimeError(f"{what}: unexpected code {code}")


def _grpc_ops(kind: str, address: str, tag: str) -> tuple[Op, Op]:
    import grpc
    from google.protobuf import json_format
    from polarismesh_specification.api.v1.service_manage import (
        grpcapi_pb2_grpc,
        request_pb2,
        service_pb2,
    )

    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)
    if kind == "register":
        counter = iter(range(MAX_OPS_PER_CLIENT))

        def register() -> None:
            n = next(counter)
            body = _instance_json(f"10.{tag}", 1 + n % 60000, REGISTER_SERVICE)
            msg = json_format.ParseDict(body, service_pb2.Instance())
            _check(kind, stub.RegisterInstance(msg, timeout=CALL_TIMEOUT).code.value, 200000)

        return register, channel.close

    requests: queue.Queue[Any] = queue.Queue()
    answers = stub.Discover(iter(requests.get, None), timeout=3600)
    ask = request_pb2.DiscoverRequest(
        type=request_pb2.DiscoverRequest.INSTANCE,
        service=service_pb2.Service(name={"value": SERVICE}, namespace={"value": "default"}),
    )
    requests.put(ask)
    first = next(answers)
    _check(kind, first.code.value, 200000)
    if kind == "discover unchanged":
        ask.service.revision.value = first.service.revision.value
    expected = 200001 if kind == "discover unchanged" else 200000

    def discover() -> None:
        requests.put(ask)
        _check(kind, next(answers).code.value, expected)

    def close() -> None:
        requests.put(None)
        answers.cancel()
        channel.close()

    return discover, close


def _http_ops(kind: str, base_url: str, tag: str) -> tuple[Op, Op]:
    import httpx

    client = httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT, trust_env=False)
    headers = {"Content-Type": "application/json"}

    def post(method: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(f"/v1/{method}", content=json.dumps(body), headers=headers)
        answer: dict[str, Any] = response.json()
        return answer

    if kind == "register":
        counter = iter(range(MAX_OPS_PER_CLIENT))

        def register() -> None:
            n = next(counter)
            body = _instance_json(f"10.{tag}", 1 + n % 60000, REGISTER_SERVICE)
            _check(kind, post("RegisterInstance", body)["code"], 200000)

        return register, client.close

    ask: dict[str, Any] = {
        "type": "INSTANCE",
        "service": {"name": SERVICE, "namespace": "default"},
    }
    first = post("Discover", ask)
    _check(kind, first["code"], 200000)
    if kind == "discover unchanged":
        ask["service"]["revision"] = first["service"]["revision"]
    expected = 200001 if kind == "discover unchanged" else 200000

    def discover() -> None:
        _check(kind, post("Discover", ask)["code"], expected)

    return discover, client.close


def _client_process(
    transport: str,
    kind: str,
    address: str,
    proc: int,
    threads: int,
    start_at: float,
    end_at: float,
    out: Any,
) -> None:
    counts = [0] * threads
    errors: list[str] = []
    make = _grpc_ops if transport == "grpc" else _http_ops

    def run(index: int) -> None:
        try:
            op, close = make(kind, address, f"{proc}.{index}.{int(start_at) % 250}")
            try:
                for _ in range(20):  # warm up the connection and the code paths
                    op()
                time.sleep(max(0.0, start_at - time.time()))
                done = 0
                while time.time() < end_at and done < MAX_OPS_PER_CLIENT:
                    op()
                    done += 1
                counts[index] = done
            finally:
                close()
        except Exception as err:  # reported to the parent, which fails the run
            errors.append(repr(err))

    workers = [
        threading.Thread(target=run, args=(i,), name=f"polaris-bench-client-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((sum(counts), errors))


# ------------------------------------------------------------------- server


class ServerProcess:
    """``python -m polaris_sdk.server`` on free loopback ports, both APIs."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polaris_sdk.server", "--grpc-port", "0", "--http-port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.grpc_address, self.http_address = self._wait_listening()
        # Keep draining stderr so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, name="polaris-bench-drain")
        self._drain.start()

    def _wait_listening(self) -> tuple[str, str]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 30
        for line in self.process.stderr:
            if match := re.search(r"listening on grpc (\S+) and (\S+)", line):
                return match.group(1), match.group(2)
            if time.monotonic() > deadline:
                break
        self.process.kill()
        raise RuntimeError("the server did not start")

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain.join()


# ---------------------------------------------------------------- measuring


def prepare(server: ServerProcess) -> None:
    """Register the instances the discover clients list."""
    import httpx

    with httpx.Client(base_url=server.http_address, timeout=CALL_TIMEOUT) as client:
        for port in range(1, PREPARED + 1):
            body = {**_instance_json("10.0.0.1", port), "metadata": {"env": "bench"}}
            answer = client.post("/v1/RegisterInstance", json=body).json()
            _check("prepare", answer["code"], 200000)


def measure(
    server: ServerProcess,
    transport: str,
    kind: str,
    clients: int,
    max_procs: int,
    duration: float,
) -> tuple[float, float]:
    """(operations per second, server CPU microseconds per operation)."""
    address = server.grpc_address if transport == "grpc" else server.http_address
    procs = min(clients, max_procs)
    per_proc = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    # Processes start and warm up before the window opens; the window is the same for all.
    start_at = time.time() + 3.0 + 0.05 * clients
    end_at = start_at + duration
    children = [
        ctx.Process(
            target=_client_process,
            args=(transport, kind, address, p, n, start_at, end_at, out),
            name=f"polaris-bench-{transport}-{p}",
        )
        for p, n in enumerate(per_proc)
    ]
    for child in children:
        child.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_start = server.cpu_seconds()
    time.sleep(max(0.0, end_at - time.time()))
    cpu_used = server.cpu_seconds() - cpu_start
    total = 0
    try:
        for _ in children:
            count, errors = out.get(timeout=duration + 120)
            if errors:
                raise RuntimeError(f"{transport} {kind} x{clients}: {errors[:3]}")
            total += count
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    return total / duration, cpu_used / max(total, 1) * 1e6


# ------------------------------------------------------------------- report


def _versions() -> str:
    import google.protobuf
    import grpc
    import httpx

    return (
        f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}, "
        f"httpx {httpx.__version__}"
    )


Results = dict[tuple[str, str, int], tuple[float, float]]


def render(results: Results, clients: list[int], duration: float, load: str) -> str:
    columns = [f"{t} x{c}" for c in clients for t in TRANSPORTS]
    lines = [HEADING, ""]
    lines += _paragraph(
        f"Measured {datetime.date.today().isoformat()} on {_cpu_model()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()} ({_versions()}), "
        f"{platform.system()}; load averages (1, 5, 15 min) {load}."
    )
    lines.append("")
    lines += _paragraph(
        f"Operations per second over loopback, each a {duration:g} s window after warm-up, "
        "and in brackets the server's CPU time per operation (from /proc, all its threads). "
        "Server: `python -m polaris_sdk.server` in its own process, memory store, both APIs. "
        "gRPC clients: official stubs, one channel each, Discover on an open stream. HTTP "
        "clients: httpx with keep-alive, the same messages as JSON. Register adds a new "
        f"instance per call; discover unchanged re-sends the last revision (200001); discover "
        f"{PREPARED} instances asks without a revision and gets the whole service back."
    )
    lines += ["", "| operation | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for op in OPERATIONS:
        cells = []
        for count in clients:
            for transport in TRANSPORTS:
                rate, cpu = results[(transport, op, count)]
                cells.append(f"{rate:,.0f} ({cpu:,.0f} µs)")
        lines.append(f"| {op}/s | " + " | ".join(cells) + " |")
    lines.append("")
    lines += _paragraph(
        "Where the cost goes: a register is mostly naming work, the same on both APIs. "
        "A Discover over HTTP is a whole HTTP exchange (headers parsed by the standard "
        "library, the body read as JSON) on a worker thread, where gRPC reads one message "
        "from a stream already open in the event loop; and each HTTP call is a blocking "
        "round trip, so with the clients on the same cores the HTTP rates are lower still. "
        "Discover answers are written as JSON once per service revision and then reused "
        "(DataNoChange too), so the whole service costs HTTP no more than an unchanged poll."
    )
    lines.append("")
    lines += _paragraph(
        "Run it: `.venv/bin/python bench/transport_bench.py` prints the table, "
        "`--write-readme` records it here; `--duration`, `--clients 1,8` and `--processes` "
        "(client processes at most) change the set-up. Clients and server share the "
        "machine: read the rates as a floor, the CPU per operation as the steadier figure."
    )
    lines.append("")
    return "\n".join(lines)


def write_readme(section: str) -> None:
    write_section(README, HEADING, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per figure")
    parser.add_argument("--clients", default="1,8", help="concurrent client counts")
    parser.add_argument("--processes", type=int, default=4, help="client processes at most")
    parser.add_argument("--write-readme", action="store_true", help="record in bench/README.md")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if not 0 < args.duration <= 60:
        parser.error("--duration must be in (0, 60]")

    load_before = _load()
    server = ServerProcess()
    results: Results = {}
    try:
        prepare(server)
        for op in OPERATIONS:
            for count in clients:
                for transport in TRANSPORTS:
                    rate, cpu = measure(server, transport, op, count, args.processes, args.duration)
                    results[(transport, op, count)] = (rate, cpu)
                    print(
                        f"{op:>22} {transport:>4} x{count:<3} {rate:10,.0f}/s {cpu:8,.0f} µs",
                        flush=True,
                    )
    finally:
        server.stop()

    load = f"{load_before} before the run and {_load()} after"
    section = render(results, clients, args.duration, load)
    print()
    print(section)
    if args.write_readme:
        write_readme(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
