"""The smallest Django project that registers itself: our app and a ``POLARIS`` dict."""

from __future__ import annotations

import os

SECRET_KEY = "framework-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.procs.django_site.urls"
INSTALLED_APPS = ["polaris_sdk.integrations.django"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

POLARIS = {
    "service": os.environ["APP_SERVICE"],
    "version": "4.2.0",
    "metadata": {"framework": "django"},
    "ttl": 1,
}
