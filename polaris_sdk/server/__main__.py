"""Run the embedded Polaris server in the foreground.

    python -m polaris_sdk.server --grpc-port 8091 --http-port 8090 [--data-dir DIR] [--host H]
        [--token TOKEN[:NS1,NS2] ...] [--tls-cert PEM --tls-key PEM] [--system-service NAME ...]
        [--delete-unhealthy-after DURATION]

(also ``polaris server ...``). ``--help`` shows every option with its default.

Logs to stderr where it listens, serves until SIGINT or SIGTERM, then stops
cleanly and exits 0. Exits 1 when it cannot listen (e.g. the port is taken)
or cannot open ``--data-dir`` (in use by another server, unreadable database).
With ``--data-dir`` every acknowledged write is on disk (SQLite, WAL), so even
``kill -9`` loses no acknowledged registration.

Tokens (``--token``, repeatable, and the ``POLARIS_SERVER_TOKENS`` environment
variable, specs separated by spaces or ``;``; both sources add up) turn the
token check on: ``TOKEN`` may act everywhere, ``TOKEN:ns1,ns2`` only in those
namespaces. The environment keeps tokens out of the process list. A bad spec
exits 2. ``--tls-cert`` and ``--tls-key`` serve both APIs over TLS.
``--system-service`` (repeatable) names the services the server registers
itself as in namespace ``Polaris`` (default: ``polaris.checker`` only).
``--delete-unhealthy-after 10m`` deletes instances unhealthy for longer than
that (durations as in polaris.yaml: ``500ms``, ``30s``, ``10m``, ``1h``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from polaris_sdk.config import parse_duration
from polaris_sdk.errors import ConfigError
from polaris_sdk.server import DEFAULT_SYSTEM_SERVICES, SYSTEM_SERVICES, PolarisServer
from polaris_sdk.server.auth import TOKENS_ENV, parse_token_specs, split_token_specs
from polaris_sdk.server.healthcheck import DEFAULT_CHECK_INTERVAL

log = logging.getLogger("polaris_sdk.server.main")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration("--delete-unhealthy-after", text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be a positive duration such as 30s or 10m")
    return seconds


def _parser(prog: str = "python -m polaris_sdk.server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run an embedded Polaris server.",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=8091,
        help="gRPC port; 0: any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8090,
        help="HTTP port: client and admin API, console, /metrics; 0: any free one"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="keep the data in SQLite in this directory (default: in memory)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--no-health-check",
        dest="health_check",
        action="store_false",
        help="answer heartbeats with 400140 HealthCheckNotOpen (default: health checks on)",
    )
    parser.add_argument(
        "--health-check-interval",
        type=float,
        default=DEFAULT_CHECK_INTERVAL,
        help="seconds between health checks (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        dest="tokens",
        action="append",
        default=[],
        metavar="TOKEN[:NS,...]",
        help=f"accept this token (repeatable; also ${TOKENS_ENV}); :NS,... limits its"
        " namespaces (default: none, no token check)",
    )
    parser.add_argument(
        "--tls-cert", default=None, help="serve TLS with this certificate (PEM) (default: no TLS)"
    )
    parser.add_argument("--tls-key", default=None, help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--system-service",
        action="append",
        default=[],
        metavar="NAME",
        help="register the server in namespace Polaris as NAME (repeatable; default: "
        + ", ".join(DEFAULT_SYSTEM_SERVICES)
        + "; also: "
        + ", ".join(s for s in SYSTEM_SERVICES if s not in DEFAULT_SYSTEM_SERVICES)
        + ")",
    )
    parser.add_argument(
        "--delete-unhealthy-after",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="delete instances unhealthy for longer than this, e.g. 10m (default: never)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )
    return parser


def _tokens(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, frozenset[str] | None]:
    specs = [*args.tokens, *split_token_specs(os.environ.get(TOKENS_ENV, ""))]
    try:
        return parse_token_specs(specs)
    except ValueError as err:
        parser.error(f"--token or ${TOKENS_ENV}: {err}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog) if prog else _parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tokens = _tokens(parser, args)
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
    try:
        server = PolarisServer(
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            data_dir=args.data_dir,
            host=args.host,
            health_check=args.health_check,
            health_check_interval=args.health_check_interval,
            tokens=tokens or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            system_services=args.system_service or DEFAULT_SYSTEM_SERVICES,
            delete_unhealthy_after=args.delete_unhealthy_after,
        )
        server.start()
    except (OSError, sqlite3.Error, ValueError) as err:
        # A taken port, a data directory in use, an unreadable database or a bad name.
        log.error("cannot start: %s", err)
        return 1
    try:
        # A signal may be delivered to another thread (gRPC's), which leaves a
        # wait without timeout blocked: Python runs the handler only once the
        # main thread wakes, so wake it now and then.
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
