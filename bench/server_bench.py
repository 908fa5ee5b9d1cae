"""Throughput of the embedded server: register/s, heartbeat/s and Discover/s (unchanged revision).

The server runs in its own process (``python -m polaris_sdk.server``); clients
run in separate processes (several threads each, one channel per client) so
the clients' GIL is not what is measured. Everything talks over loopback and
every loop is bounded by a deadline and an operation cap.

    .venv/bin/python bench/server_bench.py                 # print the table
    .venv/bin/python bench/server_bench.py --write-readme  # also record it in bench/README.md
"""

from __future__ import annotations

import argparse
import datetime
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
HEADING = "## Server throughput (bench/server_bench.py)"
OPERATIONS = ("register", "heartbeat", "discover")
MAX_OPS_PER_CLIENT = 200_000
CALL_TIMEOUT = 10.0


# ------------------------------------------------------------------ clients


def _client_ops(
    kind: str, address: str, tag: str, service_name: str = ""
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one operation, cleanup) for one client with its own channel."""
    service_name = service_name or f"bench-{kind}"
    import grpc
    from google.protobuf import wrappers_pb2 as w
    from polarismesh_specification.api.v1.service_manage import (
        grpcapi_pb2_grpc,
        request_pb2,
        service_pb2,
    )

    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)

    def instance(host: str, port: int, ttl: int | None = None) -> Any:
        msg = service_pb2.Instance(
            namespace=w.StringValue(value="default"),
            service=w.StringValue(value=service_name),
            host=w.StringValue(value=host),
            port=w.UInt32Value(value=port),
        )
        if ttl is not None:
            msg.health_check.type = service_pb2.HealthCheck.HEARTBEAT
            msg.health_check.heartbeat.ttl.value = ttl
        return msg

    def check(code: int, *expected: int) -> None:
        if code not in expected:
            raise RuntimeError(f"{kind}: unexpected code {code}")

    if kind == "register":
        counter = iter(range(MAX_OPS_PER_CLIENT))

        def op() -> None:
            n = next(counter)
            msg = instance(f"10.{tag}", 1 + n % 60000, ttl=60)
            check(stub.RegisterInstance(msg, timeout=CALL_TIMEOUT).code.value, 200000)

        return op, channel.close

    if kind == "heartbeat":
        mine = instance(f"10.{tag}", 8080, ttl=60)
        check(stub.RegisterInstance(mine, timeout=CALL_TIMEOUT).code.value, 200000)

        def op() -> None:
            check(stub.Heartbeat(mine, timeout=CALL_TIMEOUT).code.value, 200000)

        return op, channel.close

    requests: queue.Queue[Any] = queue.Queue()
    answers = stub.Discover(iter(requests.get, None), timeout=3600)
    service = service_pb2.Service(
        name=w.StringValue(value="bench-discover"), namespace=w.StringValue(value="default")
    )
    requests.put(
        request_pb2.DiscoverRequest(type=request_pb2.DiscoverRequest.INSTANCE, service=service)
    )
    first = next(answers)
    check(first.code.value, 200000)
    service.revision.value = first.service.revision.value
    unchanged = request_pb2.DiscoverRequest(
        type=request_pb2.DiscoverRequest.INSTANCE, service=service
    )

    def op() -> None:
        requests.put(unchanged)
        check(next(answers).code.value, 200001)

    def close() -> None:
        requests.put(None)
        answers.cancel()
        channel.close()

    return op, close


def _client_process(
    kind: str, address: str, proc: int, threads: int, start_at: float, end_at: float, out: Any
) -> None:
    counts = [0] * threads
    errors: list[str] = []

    def run(index: int) -> None:
        try:
            op, close = _client_ops(kind, address, f"{proc}.{index}.{int(start_at) % 250}")
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


def prepare_discover(address: str, instances: int = 10) -> None:
    """Register the instances of the service the discover clients poll."""
    op, close = _client_ops("register", address, "0.0.0", "bench-discover")
    try:
        for _ in range(instances):
            op()
    finally:
        close()


def measure(kind: str, address: str, clients: int, max_procs: int, duration: float) -> float:
    """Operations per second of ``clients`` concurrent clients doing ``kind``."""
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
            args=(kind, address, p, n, start_at, end_at, out),
            name=f"polaris-bench-{kind}-{p}",
        )
        for p, n in enumerate(per_proc)
    ]
    for child in children:
        child.start()
    total = 0
    try:
        for _ in children:
            count, errors = out.get(timeout=duration + 120)
            if errors:
                raise RuntimeError(f"{kind} x{clients}: {errors[:3]}")
            total += count
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    return total / duration


# ------------------------------------------------------------------- server


class ServerProcess:
    """``python -m polaris_sdk.server`` on a free loopback port."""

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
        self.address = self._wait_listening()
        # Keep draining stderr so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, name="polaris-bench-drain")
        self._drain.start()

    def _wait_listening(self) -> str:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 30
        for line in self.process.stderr:
            if match := re.search(r"listening on grpc (\S+)", line):
                return match.group(1)
            if time.monotonic() > deadline:
                break
        self.process.kill()
        raise RuntimeError("the server did not start")

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain.join()


# ------------------------------------------------------------------- report


def _versions() -> str:
    import google.protobuf
    import grpc

    return f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}"


def render(
    results: dict[tuple[str, int], float], clients: list[int], duration: float, load: str
) -> str:
    header = "| operation | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients)
    lines = [HEADING, ""]
    lines += _paragraph(
        f"Measured {datetime.date.today().isoformat()} on {_cpu_model()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()} ({_versions()}), "
        f"{platform.system()}; load averages (1, 5, 15 min) {load}."
    )
    lines.append("")
    lines += _paragraph(
        "Operations per second over loopback, each figure a "
        f"{duration:g} s window after warm-up. Server: `python -m polaris_sdk.server` "
        "in its own process (one asyncio loop, memory store). Clients: official stubs in "
        "separate processes, one channel each, blocking calls back to back. Register adds a "
        "new instance per call; heartbeat beats the client's own instance; discover re-sends "
        "the last revision on an open stream and gets 200001 DataNoChange."
    )
    lines += ["", header + " |", "|---" * (len(clients) + 1) + "|"]
    for op in OPERATIONS:
        cells = " | ".join(f"{results[(op, c)]:,.0f}" for c in clients)
        lines.append(f"| {op}/s | {cells} |")
    lines.append("")
    lines += _paragraph(
        "Run it: `.venv/bin/python bench/server_bench.py` prints the table, "
        "`--write-readme` records it here; `--duration`, `--clients 1,8,32` and "
        "`--processes` (client processes at most) change the set-up. The clients share the "
        "machine with the server and, on few cores, compete with it for CPU (as does anything "
        "else running): read the figures as a floor, not a ceiling."
    )
    lines.append("")
    return "\n".join(lines)


def write_readme(section: str) -> None:
    write_section(README, HEADING, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per figure")
    parser.add_argument("--clients", default="1,8,32", help="concurrent client counts")
    parser.add_argument("--processes", type=int, default=4, help="client processes at most")
    parser.add_argument("--write-readme", action="store_true", help="record in bench/README.md")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    load_before = _load()
    server = ServerProcess()
    results: dict[tuple[str, int], float] = {}
    try:
        prepare_discover(server.address)
        for op in OPERATIONS:
            for count in clients:
                rate = measure(op, server.address, count, args.processes, args.duration)
                results[(op, count)] = rate
                print(f"{op:>9} x{count:<3} {rate:10,.0f}/s", flush=True)
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
