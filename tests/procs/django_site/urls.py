from __future__ import annotations

import os

from django.http import HttpRequest, JsonResponse
from django.urls import path

from polaris_sdk.integrations.django import serving


def hello(request: HttpRequest) -> JsonResponse:
    mine = serving()
    return JsonResponse({"pid": os.getpid(), "instance": mine and mine.instance_id})


def peer(request: HttpRequest) -> JsonResponse:
    mine = serving()
    assert mine is not None and mine.consumer is not None
    found = mine.consumer.get_one_instance(service=os.environ["APP_SERVICE"])
    return JsonResponse({"host": found.host, "port": found.port})


urlpatterns = [path("hello", hello), path("peer", peer)]
