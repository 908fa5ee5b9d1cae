"""The provider side: register service instances and keep them registered.

:class:`ProviderAPI` is the facade; :class:`RegisterFlow` the engine it
shares per context; :mod:`polaris_sdk.provider.flow` the I/O-free decisions.
"""

from __future__ import annotations

from polaris_sdk.provider.api import ProviderAPI
from polaris_sdk.provider.flow import RegistrationState, RegistrationStatus
from polaris_sdk.provider.heartbeat import RegisterFlow

__all__ = ["ProviderAPI", "RegisterFlow", "RegistrationState", "RegistrationStatus"]
