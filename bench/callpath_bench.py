"""The call path's costs: update_service_call_result, and a PolarisTransport hop over bare httpx.

Everything on loopback, in one process, bounded loops. Each figure is given
with a floor measured in the same run, so the ratios hold on another machine:

* ``update_service_call_result`` against ``get_one_instance`` (the warm pick,
  the cheapest SDK call) and an empty function call;
* an httpx GET to a stdlib HTTP server through ``PolarisTransport``
  (``http://greeter/``) against the same GET to the address directly.

    python bench/callpath_bench.py [--budget SECONDS]

Writes the "Call path" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _report

from polaris_sdk import ConsumerAPI, InstanceRegisterRequest, ProviderAPI
from polaris_sdk.integrations.httpx import PolarisTransport
from polaris_sdk.server import PolarisServer

HEADING = "## Call path"
MAX_CALLS = 2_000_000


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per answer: separate header and body writes meet delayed ACKs
    # and cost 40 ms on loopback.
    wbufsize = 65536

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def per_call(fn: Callable[[], object], budget: float, rounds: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``rounds`` rounds of ``budget`` / rounds."""
    results = []
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        deadline = start + budget / rounds
        while calls < MAX_CALLS:
            for _ in range(100):
                fn()
            calls += 100
            if time.perf_counter() >= deadline:
                break
        results.append((time.perf_counter() - start) / calls)
    return statistics.median(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per figure")
    args = parser.parse_args()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    figures: dict[str, float] = {}
    with PolarisServer(grpc_port=0) as server:
        settings = {"addresses": [server.grpc_address]}
        with ProviderAPI.create(**settings) as provider, ConsumerAPI.create(**settings) as consumer:
            provider.register(
                InstanceRegisterRequest(service="greeter", host="127.0.0.1", port=port)
            )
            while not len(consumer.get_instances(service="greeter")):
                time.sleep(0.05)
            instance = consumer.get_one_instance(service="greeter")

            def report() -> None:
                consumer.update_service_call_result(
                    service="greeter", instance=instance, ret_code=200, delay=0.001
                )

            figures["empty function call"] = per_call(lambda: None, args.budget)
            figures["get_one_instance (warm)"] = per_call(
                lambda: consumer.get_one_instance(service="greeter"), args.budget
            )
            figures["update_service_call_result"] = per_call(report, args.budget)
            with httpx.Client() as bare:
                url = f"http://127.0.0.1:{port}/"
                figures["httpx GET, direct"] = per_call(lambda: bare.get(url), args.budget, 3)
            with httpx.Client(transport=PolarisTransport(consumer)) as routed:
                figures["httpx GET, PolarisTransport"] = per_call(
                    lambda: routed.get("http://greeter/"), args.budget, 3
                )
    httpd.shutdown()
    section = render(figures, args.budget)
    print(section)
    _report.write_section(Path(__file__).resolve().parent / "README.md", HEADING, section)
    return 0


def render(figures: dict[str, float], budget: float) -> str:
    floor = figures["empty function call"]
    pick = figures["get_one_instance (warm)"]
    direct = figures["httpx GET, direct"]
    lines = [
        HEADING,
        "",
        *_report.paragraph(
            f"`python bench/callpath_bench.py --budget {budget:g}`, "
            f"{datetime.date.today().isoformat()}, {_report.cpu_model()}, "
            f"{os.cpu_count()} CPUs, load average {_report.load()} at the end, "
            f"Python {sys.version.split()[0]}. Loopback only, one process; medians of 3 rounds."
        ),
        "",
        "| what | per call | ratio |",
        "| --- | ---: | ---: |",
        f"| empty function call | {floor * 1e9:.0f} ns | 1 |",
        f"| get_one_instance (warm) | {pick * 1e6:.2f} µs | {pick / floor:.0f} x empty |",
        (
            f"| update_service_call_result | {figures['update_service_call_result'] * 1e6:.2f} µs"
            f" | {figures['update_service_call_result'] / pick:.1f} x get_one_instance |"
        ),
        f"| httpx GET, direct | {direct * 1e6:.0f} µs | 1 |",
        (
            f"| httpx GET, PolarisTransport | {figures['httpx GET, PolarisTransport'] * 1e6:.0f} µs"
            f" | {figures['httpx GET, PolarisTransport'] / direct:.2f} x direct |"
        ),
        "",
        *_report.paragraph(
            "The transport hop adds one pick, one URL rewrite, one request copy and one "
            "report per request; the HTTP exchange itself dominates."
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
