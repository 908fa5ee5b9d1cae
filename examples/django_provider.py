"""A Django service that registers itself with Polaris (run under gunicorn or any WSGI server).

    POLARIS_ADDRESSES=127.0.0.1:8091 \
        gunicorn -w 2 -b 127.0.0.1:8003 examples.django_provider:application

A one-file project: in a real one the two settings below live in
settings.py. The app in INSTALLED_APPS registers the instance (port: the
socket gunicorn hands its workers), drains on SIGTERM and deregisters when
the last worker stops; ``serving()`` gives a view the consumer.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from polaris_sdk.integrations.django import serving

settings.configure(
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["polaris_sdk.integrations.django"],
    POLARIS={
        "service": os.environ.get("GREETER_SERVICE", "greeter"),
        "metadata": {"framework": "django"},
    },
)


def hello(request: HttpRequest) -> JsonResponse:
    mine = serving()
    return JsonResponse(
        {"from": "django", "pid": os.getpid(), "instance": mine and mine.instance_id}
    )


urlpatterns = [path("hello", hello)]
application = get_wsgi_application()
