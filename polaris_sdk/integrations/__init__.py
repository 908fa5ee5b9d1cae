"""Integrations with other libraries and frameworks; each module imports its
library only when imported, and uses the public facades only, as user code would.

Clients that resolve service names (``ConsumerAPI`` / ``AsyncConsumerAPI``:
``get_one_instance``, ``update_service_call_result``):

* :mod:`polaris_sdk.integrations.httpx`: ``PolarisTransport`` /
  ``AsyncPolarisTransport``, httpx transports that send ``http://greeter/...``
  to an instance of ``greeter``.
* :mod:`polaris_sdk.integrations.requests`: ``PolarisAdapter``, the same for
  requests (extra ``requests``).
* :mod:`polaris_sdk.integrations.grpc`: ``channel`` / ``aio_channel``, gRPC
  channels that pick an instance per call.
* :mod:`polaris_sdk.integrations.prometheus`: ``PolarisMetrics``, the SDK's
  metrics under polaris-go's names (extra ``metrics``); it reads the context
  through ``add_observer``.

Serving processes (register, drain on SIGTERM, deregister last):
:mod:`.starlette` (FastAPI, Starlette; the asyncio twins), :mod:`.flask`,
:mod:`.django`; what they share is in :mod:`._serving`.
"""
