"""The Django app of :mod:`polaris_sdk.integrations.django`."""

from __future__ import annotations

import os
import sys
from typing import Any, Final

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

from polaris_sdk.integrations import django as polaris_django
from polaris_sdk.integrations._serving import Serving, ServingOptions

_MANAGEMENT: Final = ("manage.py", "django-admin", "django-admin.py")


def _serves() -> bool:
    """Register only in a serving process: not for ``migrate``, ``shell`` and the like,
    nor in the file-watching parent of ``runserver`` (its child serves: ``RUN_MAIN``)."""
    argv = sys.argv
    program = os.path.basename(argv[0]) if argv else ""
    management = program in _MANAGEMENT or argv[0].endswith(os.path.join("django", "__main__.py"))
    if not management:
        return True
    if len(argv) < 2 or argv[1] != "runserver":
        return False
    return "--noreload" in argv or os.environ.get("RUN_MAIN") == "true"


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
