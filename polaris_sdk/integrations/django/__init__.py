"""Register a Django project, drain on SIGTERM, deregister with the last worker.

Usage, in ``settings.py``::

    INSTALLED_APPS = [..., "polaris_sdk.integrations.django"]
    POLARIS = {"service": "greeter", "port": 8000, "metadata": {"env": "prod"}}

``POLARIS`` takes ``service`` (required), ``namespace``, ``host``, ``port``
(else ``POLARIS_INSTANCE_PORT`` or the listening socket gunicorn hands its
workers), ``drain``, ``settings`` (arguments of ``SDKContext.create``) and
any ``register_instance`` field. Registration starts when the app registry
is ready; see :mod:`polaris_sdk.integrations._serving`. Management commands
(``manage.py``, ``django-admin``, ``python -m django``) other than
``runserver`` do not register, nor does the file-watching parent process of
``runserver`` (its child, which serves, does). :func:`serving` returns the
:class:`~polaris_sdk.integrations._serving.Serving` (its ``consumer`` for
calling other services). Importing this package imports Django only when
Django loads the app.
"""

from __future__ import annotations

from polaris_sdk.integrations._serving import Serving

__all__ = ["serving"]


_serving: list[Serving] = []


def serving() -> Serving | None:
    """The registration of this process, once the app is ready."""
    return _serving[0] if _serving else None
