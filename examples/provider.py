"""Register a service instance, keep it registered with heartbeats, deregister on Ctrl-C.

Talks to the Polaris servers named in POLARIS_ADDRESSES (comma separated)
when it is set; otherwise starts the embedded server in this process.

    python examples/provider.py --service echo --port 8080 --ttl 5
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from types import FrameType

from polaris_sdk import InstanceRegisterRequest, ProviderAPI
from polaris_sdk.provider import RegistrationStatus
from polaris_sdk.server import PolarisServer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--service", default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ttl", type=int, default=5, help="heartbeat interval in seconds")
    return parser.parse_args()


def on_status(status: RegistrationStatus) -> None:
    print(f"{status.instance_id}: {status.state.value} ({status.last_error or 'ok'})", flush=True)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Ctrl-C (SIGINT) and SIGTERM end the wait below wherever they arrive, so
    # the provider is always closed, and the instance deregistered, in order.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as stack:
        addresses = None  # SDKContext.create reads POLARIS_ADDRESSES
        if not os.environ.get("POLARIS_ADDRESSES"):
            server = stack.enter_context(PolarisServer(grpc_port=0))
            addresses = [server.grpc_address]
            print(f"started the embedded server on {server.grpc_address}", flush=True)
        # Closing the provider (leaving the with block) deregisters the instance.
        provider = stack.enter_context(ProviderAPI.create(addresses=addresses, on_status=on_status))
        resp = provider.register_instance(
            InstanceRegisterRequest(
                namespace=args.namespace,
                service=args.service,
                host=args.host,
                port=args.port,
                ttl=args.ttl,
            )
        )
        print(
            f"registered {resp.instance_id}; a heartbeat every {args.ttl}s; Ctrl-C to stop",
            flush=True,
        )
        stop.wait()
        print("deregistering", flush=True)
    print("deregistered", flush=True)


if __name__ == "__main__":
    main()
