"""Calls the greeter service at a steady rate; one JSON line per request on stdout.

    POLARIS_ADDRESSES=127.0.0.1:8091 python examples/greeter_consumer.py

Each request picks an instance with ``get_one_instance`` and calls it once
(no retry, so every failure shows). Runs until SIGTERM or SIGINT, or for
``GREETER_REQUESTS`` requests; ``GREETER_RATE`` is requests per second.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from polaris_sdk import ConsumerAPI, PolarisError

SERVICE = os.environ.get("GREETER_SERVICE", "greeter")
RATE = float(os.environ.get("GREETER_RATE", "10"))
REQUESTS = int(os.environ.get("GREETER_REQUESTS", "1000000"))


def main() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ConsumerAPI.create() as consumer, httpx.Client(timeout=1.0, trust_env=False) as http:
        for _ in range(REQUESTS):
            if stop.wait(1.0 / RATE):
                break
            result: dict[str, object] = {"t": time.time()}
            try:
                instance = consumer.get_one_instance(service=SERVICE)
                result["port"] = instance.port
                answer = http.get(f"http://{instance.host}:{instance.port}/hello")
                answer.raise_for_status()
                result["ok"] = True
            except (PolarisError, httpx.HTTPError) as exc:
                result.update(ok=False, error=type(exc).__name__)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
