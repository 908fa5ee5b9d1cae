"""Register a Flask app, drain on SIGTERM, deregister with the last worker.

Usage::

    from flask import Flask
    from polaris_sdk.integrations.flask import Polaris

    app = Flask(__name__)
    polaris = Polaris(app, service="greeter")    # or Polaris(); polaris.init_app(app)
    # polaris.consumer.get_one_instance(service="other") in a view

Settings: the arguments, else ``app.config`` keys ``POLARIS_SERVICE``,
``POLARIS_NAMESPACE``, ``POLARIS_HOST``, ``POLARIS_PORT``, ``POLARIS_DRAIN``,
``POLARIS_METADATA``, ``POLARIS_VERSION``, ``POLARIS_TTL`` and
``POLARIS_SETTINGS`` (arguments of ``SDKContext.create``). Runs under
gunicorn (``-w N``, with or without ``--preload``), ``flask run`` or any
WSGI server; see :mod:`polaris_sdk.integrations._serving` for what happens
on start-up and SIGTERM. ``app.extensions["polaris"]`` is the
:class:`~polaris_sdk.integrations._serving.Serving`. Importing this module
imports nothing of Flask.
"""

from __future__ import annotations

from typing import Any, Final

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext
from polaris_sdk.integrations._serving import Serving, ServingOptions

__all__ = ["Polaris"]

_CONFIG_KEYS: Final = {
    "POLARIS_NAMESPACE": "namespace",
    "POLARIS_HOST": "host",
    "POLARIS_PORT": "port",
    "POLARIS_DRAIN": "drain",
    "POLARIS_METADATA": "metadata",
    "POLARIS_VERSION": "version",
    "POLARIS_PROTOCOL": "protocol",
    "POLARIS_TTL": "ttl",
    "POLARIS_SETTINGS": "settings",
}


class Polaris:
    """The Flask extension; see the module docstring."""

    def __init__(self, app: Any = None, service: str | None = None, **options: Any) -> None:
        self._service = service
        self._options = options
        self.serving: Serving | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        config = app.config
        options = {name: config[key] for key, name in _CONFIG_KEYS.items() if key in config}
        options.update(self._options)
        service = self._service or config.get("POLARIS_SERVICE")
        self.serving = Serving(ServingOptions.build(service, **options))
        app.extensions["polaris"] = self.serving
        self.serving.start()

    @property
    def context(self) -> SDKContext | None:
        return self.serving.context if self.serving is not None else None

    @property
    def provider(self) -> ProviderAPI | None:
        return self.serving.provider if self.serving is not None else None

    @property
    def consumer(self) -> ConsumerAPI | None:
        return self.serving.consumer if self.serving is not None else None
