"""A Flask app made by a factory, ``Polaris().init_app(app)`` configured through ``app.config``.

    APP_SERVICE=svc APP_REGISTRY=127.0.0.1:8091 gunicorn -w 2 'tests.procs.wsgi_app:create_app()'

Every setting of the integration comes from ``app.config`` (``POLARIS_*``
keys), the registry's address included (``POLARIS_SETTINGS``), so nothing
needs ``POLARIS_ADDRESSES`` in the environment. No port is given: the
integration reads the socket the server listens on. ``/hello`` answers the
pid and the instance id, ``/status`` the registration and connection
states; ``/peer`` looks the service up through the extension's consumer.
Run by the framework tests.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from polaris_sdk.integrations.flask import Polaris

logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s: %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)
polaris = Polaris()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        POLARIS_SERVICE=os.environ["APP_SERVICE"],
        POLARIS_VERSION="3.1.0",
        POLARIS_METADATA={"framework": "flask", "configured": "app.config"},
        POLARIS_TTL=1,
        POLARIS_DRAIN=float(os.environ.get("APP_DRAIN", "1.5")),
        POLARIS_SETTINGS={
            "addresses": os.environ["APP_REGISTRY"].split(","),
            "global.serverConnector.protocol": os.environ.get("APP_PROTOCOL", "grpc"),
            "refresh_interval": 0.2,
        },
    )
    polaris.init_app(app)

    @app.get("/hello")
    def hello() -> dict[str, Any]:
        serving = app.extensions["polaris"]
        return {"pid": os.getpid(), "instance": serving.instance_id}

    @app.get("/status")
    def status() -> dict[str, Any]:
        serving = app.extensions["polaris"]
        found = serving.instance_id and serving.provider.status(serving.instance_id)
        return {
            "registration": found and found.state.value,
            "connection": serving.context.state.value,
        }

    @app.get("/peer")
    def peer() -> dict[str, Any]:
        assert polaris.consumer is not None
        found = polaris.consumer.get_one_instance(service=app.config["POLARIS_SERVICE"])
        return {"host": found.host, "port": found.port}

    return app


if os.environ.get("APP_MODULE_LEVEL"):  # gunicorn tests.procs.wsgi_app:app (--preload)
    app = create_app()
