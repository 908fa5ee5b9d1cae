"""Integrations with other libraries; each module imports its library only when imported.

Every integration uses the public facades only (``ConsumerAPI`` /
``AsyncConsumerAPI``: ``get_one_instance``, ``get_instances``,
``update_service_call_result``), so it behaves as user code would.

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
"""
