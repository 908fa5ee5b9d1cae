"""Run the embedded Polaris server in the foreground.

    python -m polaris_sdk.server --grpc-port 8091 --http-port 8090 [--data-dir DIR] [--host H]

Logs to stderr where it listens, serves until SIGINT or SIGTERM, then stops
cleanly and exits 0. Exits 1 when it cannot listen (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.healthcheck import DEFAULT_CHECK_INTERVAL

log = logging.getLogger("polaris_sdk.server.main")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polaris_sdk.server", description="Run an embedded Polaris server."
    )
    parser.add_argument("--grpc-port", type=int, default=8091, help="gRPC port (0: any free one)")
    parser.add_argument("--http-port", type=int, default=8090, help="HTTP port (reserved)")
    parser.add_argument("--data-dir", default=None, help="data directory (reserved)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--no-health-check",
        dest="health_check",
        action="store_false",
        help="answer heartbeats with 400140 HealthCheckNotOpen",
    )
    parser.add_argument(
        "--health-check-interval",
        type=float,
        default=DEFAULT_CHECK_INTERVAL,
        help="seconds between health checks",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = PolarisServer(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        data_dir=args.data_dir,
        host=args.host,
        health_check=args.health_check,
        health_check_interval=args.health_check_interval,
    )
    try:
        server.start()
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    try:
        stopping.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
