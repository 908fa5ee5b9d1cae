"""The ZooKeeper side of the peer comparison (runs in bench/peers/.venv, client kazoo).

A service instance is an ephemeral znode ``/services/<service>/<host:port>``
holding the instance as JSON, owned by the provider's session; the consumer
keeps a kazoo ``ChildrenWatch`` on the service node and reads the data of
each new child (asynchronously, all at once), keeping a dict and a list of
instances — the shape of Curator's and Dubbo's ZooKeeper discovery. Every
call has a timeout (kazoo's session timeout, 5 s on reads).

* ``rtt``: create of an ephemeral znode, one at a time; each deleted again
  outside the timing.
* ``propagation``: creates at random moments, by a second session, until the
  consumer's view holds the new child and its data.
* ``provider``: one ephemeral znode on a session of ``--ttl`` seconds (kazoo
  pings to keep it) until killed; ``detect`` SIGKILLs such providers and
  times until the child leaves the consumer's view.
* ``keep``: ``--count`` ephemeral znodes on one session of ``--ttl`` seconds.
* ``watch``: view of the ``keep`` service; RSS once complete, then on
  ``select`` ``random.choice`` over the watched list, calls/s.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

SCRIPT = str(Path(__file__).resolve())
READ_TIMEOUT = 5.0


def connect(target: str, session_timeout: float = 10.0) -> KazooClient:
    client = KazooClient(hosts=target, timeout=session_timeout)
    client.start(timeout=15)
    return client


def service_path(service: str) -> str:
    return f"/services/{service}"


def node_path(service: str, port: int) -> str:
    return f"{service_path(service)}/{common.instance_name(port)}"


def value_of(port: int) -> bytes:
    return json.dumps(common.instance_value(port)).encode()


def register(client: KazooClient, service: str, port: int) -> None:
    client.create(node_path(service, port), value_of(port), ephemeral=True)


class View:
    """The consumer's picture of one service: a children watch plus each child's data."""

    def __init__(self, client: KazooClient, service: str) -> None:
        self.client = client
        self.path = service_path(service)
        self.items: dict[str, dict[str, Any]] = {}
        self.instances: list[dict[str, Any]] = []
        self.arrived: dict[str, float] = {}
        client.ensure_path(self.path)
        ChildrenWatch(client, self.path, self._changed)

    def _changed(self, children: list[str]) -> None:
        current = set(children)
        new = [name for name in children if name not in self.items]
        reads = [(name, self.client.get_async(f"{self.path}/{name}")) for name in new]
        items = {name: value for name, value in self.items.items() if name in current}
        for name, read in reads:
            try:
                data, _ = read.get(timeout=READ_TIMEOUT)
            except NoNodeError:
                continue
            items[name] = json.loads(data)
        now = time.perf_counter()
        for name in new:
            if name in items:
                self.arrived.setdefault(name, now)
        self.items = items
        self.instances = list(items.values())


def rtt(args: Any) -> dict[str, Any]:
    service = f"{args.prefix}-rtt"
    client = connect(args.target)
    samples: list[float] = []
    try:
        client.ensure_path(service_path(service))
        for n in range(20 + args.count):
            started = time.perf_counter()
            register(client, service, 40000 + n)
            elapsed = time.perf_counter() - started
            client.delete(node_path(service, 40000 + n))
            if n >= 20:
                samples.append(elapsed)
    finally:
        client.stop()
        client.close()
    return {"series": {"create ephemeral": samples}}


def propagation(args: Any) -> dict[str, Any]:
    service = f"{args.prefix}-prop"
    consumer, registrar = connect(args.target), connect(args.target)
    started: dict[str, float] = {}
    try:
        view = View(consumer, service)
        origin = time.monotonic()
        for n, offset in enumerate(common.moments(args.count, args.window, args.seed)):
            time.sleep(max(0.0, origin + offset - time.monotonic()))
            port = 41000 + n
            started[common.instance_name(port)] = time.perf_counter()
            register(registrar, service, port)
        common.poll(lambda: len(view.arrived) >= len(started), 10, 0.05)
    finally:
        for client in (registrar, consumer):
            client.stop()
            client.close()
    samples = [view.arrived[k] - t for k, t in started.items() if k in view.arrived]
    return {"series": {"register -> watch": samples}, "missing": len(started) - len(samples)}


def provider(args: Any) -> None:
    client = connect(args.target, args.ttl)
    client.ensure_path(service_path(args.prefix))
    register(client, args.prefix, args.port)
    common.emit("ready", {"negotiated_timeout_ms": client._session_timeout})
    common.command()
    client.stop()
    client.close()


def detect(args: Any) -> dict[str, Any]:
    service = f"{args.prefix}-detect-{round(args.ttl)}s"
    client = connect(args.target)
    view = View(client, service)

    def spawn(port: int) -> common.Child:
        argv = ["provider", "--target", args.target, "--prefix", service]
        argv += ["--port", str(port), "--ttl", str(args.ttl)]
        return common.Child(common.provider_argv(SCRIPT, argv))

    try:
        return common.run_detection(
            label=f"zookeeper session {args.ttl:g}",
            samples=args.samples,
            spawn=spawn,
            visible=lambda port: common.instance_name(port) in view.items,
            kill_after=lambda: args.ttl / 3,
            bound=args.ttl + 30,
            first_port=44000 + 100 * round(args.ttl),
        )
    finally:
        client.stop()
        client.close()


def keep(args: Any) -> None:
    service = f"{args.prefix}-keep"
    client = connect(args.target, args.ttl)
    client.ensure_path(service_path(service))
    started = time.perf_counter()
    for n in range(args.count):
        register(client, service, 20000 + n)
    common.emit(
        "ready",
        {"register_s": time.perf_counter() - started, "threads": threading.active_count()},
    )
    common.command()
    client.stop()
    client.close()


def watch(args: Any) -> None:
    gc.collect()
    baseline = common.rss_bytes()
    started = time.perf_counter()
    client = connect(args.target)
    view = View(client, f"{args.prefix}-keep")
    if not common.poll(lambda: len(view.items) >= args.count, 60, 0.05):
        raise SystemExit(f"the consumer did not see {args.count} instances in 60 s")
    load_s = time.perf_counter() - started
    gc.collect()
    common.emit(
        "ready",
        {
            "rss": common.rss_bytes(),
            "baseline": baseline,
            "load_s": load_s,
            "threads": threading.active_count(),
        },
    )
    while (cmd := common.command()) != "stop":
        if cmd == "select":
            rate = common.calls_per_second(lambda: random.choice(view.instances), args.budget)
            common.emit("result", {"rates": {"random.choice over the watched list": rate}})
    client.stop()
    client.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.check_bounds(args)
    if args.mode == "rtt":
        common.emit("result", rtt(args))
    elif args.mode == "propagation":
        common.emit("result", propagation(args))
    elif args.mode == "provider":
        provider(args)
    elif args.mode == "detect":
        common.emit("result", detect(args))
    elif args.mode == "keep":
        keep(args)
    elif args.mode == "watch":
        watch(args)


if __name__ == "__main__":
    main()
