"""A Flask service that registers itself with Polaris (run under gunicorn).

    POLARIS_ADDRESSES=127.0.0.1:8091 gunicorn -w 2 -b 127.0.0.1:8002 examples.flask_provider:app

The extension registers the instance (port: the socket gunicorn hands its
workers), drains on SIGTERM and deregisters when the last worker stops.
"""

from __future__ import annotations

import os

from flask import Flask

from polaris_sdk.integrations.flask import Polaris

app = Flask(__name__)
app.config["POLARIS_SERVICE"] = os.environ.get("GREETER_SERVICE", "greeter")
app.config["POLARIS_METADATA"] = {"framework": "flask"}
polaris = Polaris(app)


@app.get("/hello")
def hello() -> dict[str, object]:
    return {
        "from": "flask",
        "pid": os.getpid(),
        "instance": polaris.serving and polaris.serving.instance_id,
    }
