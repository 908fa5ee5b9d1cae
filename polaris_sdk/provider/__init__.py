"""The provider side: register service instances and keep them registered.

Modules, each named for what it holds:

* :mod:`~polaris_sdk.provider.api`: :class:`ProviderAPI`, the facade.
* :mod:`~polaris_sdk.provider.flow`: :class:`RegisterFlow`, the engine the
  facades of one context share (register, deregister, close, status listeners).
* :mod:`~polaris_sdk.provider.core`: the I/O-free decisions of keeping one
  instance registered (:class:`~polaris_sdk.provider.core.RegistrationCore`).
* :mod:`~polaris_sdk.provider.registry`: the I/O-free bookkeeping of all of
  them (by id, by address, owners, closing).
* :mod:`~polaris_sdk.provider.heartbeat`: the threaded driver running the
  steps on the context's scheduler.
* :mod:`~polaris_sdk.provider.exit`: closing at interpreter exit and on signals.
"""

from __future__ import annotations

from polaris_sdk.provider.api import ProviderAPI
from polaris_sdk.provider.core import RegistrationState, RegistrationStatus
from polaris_sdk.provider.flow import RegisterFlow

__all__ = ["ProviderAPI", "RegisterFlow", "RegistrationState", "RegistrationStatus"]
