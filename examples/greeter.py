"""A tiny greeter service: answers "hello from <port>" over HTTP or gRPC, registered in Polaris.

    python examples/greeter.py --polaris 127.0.0.1:8091 --kind http --port 0

Prints ``READY <port>`` once it serves and is registered, then runs until
killed (SIGTERM or Ctrl-C deregister it; ``kill -9`` leaves it registered,
as a crashed process would). HTTP: ``GET /hello`` (and ``/fail`` answers
503). gRPC: the unary method ``/greeter.Greeter/SayHello`` with raw bytes,
built from a generic handler (no generated code).
"""

from __future__ import annotations

import argparse
import http.server
import signal
import threading
from concurrent import futures
from types import FrameType
from typing import Any

import grpc

from polaris_sdk import InstanceRegisterRequest, ProviderAPI

GRPC_METHOD = "/greeter.Greeter/SayHello"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_address[1]
        status, body = (503, b"failing") if self.path == "/fail" else (200, b"hello from %d" % port)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_http(host: str, port: int) -> tuple[int, object]:
    server = http.server.ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="greeter-http", daemon=True).start()
    return server.server_address[1], server


def serve_grpc(host: str, port: int) -> tuple[int, object]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    bound: list[int] = []

    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello from %d" % bound[0]

    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound.append(server.add_insecure_port(f"{host}:{port}"))
    server.start()
    return bound[0], server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polaris", required=True, help="Polaris gRPC address host:port")
    parser.add_argument("--kind", choices=("http", "grpc"), default="http")
    parser.add_argument("--service", default="greeter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    # Keep the server objects: a grpc.Server stops when it is garbage collected.
    if args.kind == "http":
        port, keep = serve_http(args.host, args.port)
    else:
        port, keep = serve_grpc(args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ProviderAPI.create(addresses=[args.polaris]) as provider:
        provider.register_instance(
            InstanceRegisterRequest(
                service=args.service, host=args.host, port=port, protocol=args.kind, ttl=5
            )
        )
        print(f"READY {port}", flush=True)
        stop.wait()
    del keep


if __name__ == "__main__":
    main()
