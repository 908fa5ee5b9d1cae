"""The Django app of :mod:`polaris_sdk.integrations.django`."""

from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

from polaris_sdk.integrations import django as polaris_django
from polaris_sdk.integrations._serving import Serving, ServingOptions


def _serves() -> bool:
    """Register only in a serving process: not for ``migrate``, ``shell`` and the like."""
    argv = sys.argv
    if len(argv) > 1 and argv[0].endswith("manage.py"):
        return argv[1] == "runserver"
    return True


class PolarisConfig(AppConfig):  # type: ignore[misc]
    name = "polaris_sdk.integrations.django"
    label = "polaris_sdk"
    verbose_name = "PolarisMesh registration"

    def ready(self) -> None:
        if polaris_django._serving or not _serves():
            return
        options: dict[str, Any] = dict(getattr(settings, "POLARIS", {}))
        serving = Serving(ServingOptions.build(options.pop("service", None), **options))
        polaris_django._serving.append(serving)
        serving.start()
