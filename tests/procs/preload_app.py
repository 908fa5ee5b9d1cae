"""The Flask app of tests/procs/wsgi_app.py for ``gunicorn --preload``: the master uses
the SDK before it forks its workers (run by the framework tests).

At import, in the master: the extension starts (its context, its registration
thread), the master registers an instance of its own, ``APP_SERVICE-master``
at 127.0.0.1:7300 (TTL 1 s), kept alive by the master alone and deregistered
when the master exits (the channel or the connection pool in use), and over
HTTP its consumer lists that service. The workers inherit all of it.
"""

from __future__ import annotations

import os

from polaris_sdk import ProviderAPI
from tests.procs.wsgi_app import create_app, polaris

SERVICE = os.environ["APP_SERVICE"]

app = create_app()
assert polaris.context is not None and polaris.consumer is not None
master = ProviderAPI(polaris.context)
master.register_instance(service=f"{SERVICE}-master", host="127.0.0.1", port=7300, ttl=1)
master.deregister_on_exit()
if os.environ.get("APP_PROTOCOL") == "http":
    # Over gRPC a lookup leaves the Discover stream's reader inside gRPC, and
    # grpcio may then crash a child forked meanwhile (see the README, fork()).
    assert [i.port for i in polaris.consumer.get_instances(service=f"{SERVICE}-master")] == [7300]
print(f"event: master in use pid={os.getpid()}", flush=True)
