"""polaris_sdk: a Python SDK for the PolarisMesh service registry.

The public API is re-exported here; ``__all__`` lists it. Names are loaded on
first use (PEP 562), so ``import polaris_sdk`` (and the pytest plugin, which
pytest loads in every run) stays cheap until something is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polaris_sdk.aio import AsyncConsumerAPI, AsyncProviderAPI, AsyncSDKContext
    from polaris_sdk.config import Configuration
    from polaris_sdk.consumer import ConnectionState, ConsumerAPI
    from polaris_sdk.consumer.circuitbreaker_api import CircuitBreakerAPI
    from polaris_sdk.context import SDKContext
    from polaris_sdk.errors import (
        AuthError,
        BadRequestError,
        CallAbortedError,
        ClosedError,
        ConfigError,
        InstanceNotFoundError,
        NetworkError,
        PolarisError,
        PolarisTimeoutError,
        ProtocolMismatchError,
        ResourceNotFoundError,
        ServerError,
        ValidationError,
        WrongLoopError,
    )
    from polaris_sdk.model import (
        CircuitBreakerEvent,
        GetAllInstancesRequest,
        GetInstancesRequest,
        GetOneInstanceRequest,
        Instance,
        InstanceDeregisterRequest,
        InstanceHeartbeatRequest,
        InstanceRegisterRequest,
        InstanceRegisterResponse,
        Resource,
        ServiceCallResult,
        ServiceChangeEvent,
        ServiceInstances,
        ServiceKey,
        WatchServiceRequest,
    )
    from polaris_sdk.observe import Observer
    from polaris_sdk.provider import ProviderAPI

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
    "AsyncConsumerAPI": "polaris_sdk.aio",
    "AsyncProviderAPI": "polaris_sdk.aio",
    "AsyncSDKContext": "polaris_sdk.aio",
    "AuthError": "polaris_sdk.errors",
    "BadRequestError": "polaris_sdk.errors",
    "CallAbortedError": "polaris_sdk.errors",
    "CircuitBreakerAPI": "polaris_sdk.consumer.circuitbreaker_api",
    "CircuitBreakerEvent": "polaris_sdk.model",
    "ClosedError": "polaris_sdk.errors",
    "ConfigError": "polaris_sdk.errors",
    "Configuration": "polaris_sdk.config",
    "ConnectionState": "polaris_sdk.consumer",
    "ConsumerAPI": "polaris_sdk.consumer",
    "GetAllInstancesRequest": "polaris_sdk.model",
    "GetInstancesRequest": "polaris_sdk.model",
    "GetOneInstanceRequest": "polaris_sdk.model",
    "Instance": "polaris_sdk.model",
    "InstanceDeregisterRequest": "polaris_sdk.model",
    "InstanceHeartbeatRequest": "polaris_sdk.model",
    "InstanceNotFoundError": "polaris_sdk.errors",
    "InstanceRegisterRequest": "polaris_sdk.model",
    "InstanceRegisterResponse": "polaris_sdk.model",
    "NetworkError": "polaris_sdk.errors",
    "Observer": "polaris_sdk.observe",
    "PolarisError": "polaris_sdk.errors",
    "PolarisTimeoutError": "polaris_sdk.errors",
    "ProtocolMismatchError": "polaris_sdk.errors",
    "ProviderAPI": "polaris_sdk.provider",
    "Resource": "polaris_sdk.model",
    "ResourceNotFoundError": "polaris_sdk.errors",
    "SDKContext": "polaris_sdk.context",
    "ServerError": "polaris_sdk.errors",
    "ServiceCallResult": "polaris_sdk.model",
    "ServiceChangeEvent": "polaris_sdk.model",
    "ServiceInstances": "polaris_sdk.model",
    "ServiceKey": "polaris_sdk.model",
    "ValidationError": "polaris_sdk.errors",
    "WatchServiceRequest": "polaris_sdk.model",
    "WrongLoopError": "polaris_sdk.errors",
}

__all__ = [
    "AsyncConsumerAPI",
    "AsyncProviderAPI",
    "AsyncSDKContext",
    "AuthError",
    "BadRequestError",
    "CallAbortedError",
    "CircuitBreakerAPI",
    "CircuitBreakerEvent",
    "ClosedError",
    "ConfigError",
    "Configuration",
    "ConnectionState",
    "ConsumerAPI",
    "GetAllInstancesRequest",
    "GetInstancesRequest",
    "GetOneInstanceRequest",
    "Instance",
    "InstanceDeregisterRequest",
    "InstanceHeartbeatRequest",
    "InstanceNotFoundError",
    "InstanceRegisterRequest",
    "InstanceRegisterResponse",
    "NetworkError",
    "Observer",
    "PolarisError",
    "PolarisTimeoutError",
    "ProtocolMismatchError",
    "ProviderAPI",
    "Resource",
    "ResourceNotFoundError",
    "SDKContext",
    "ServerError",
    "ServiceCallResult",
    "ServiceChangeEvent",
    "ServiceInstances",
    "ServiceKey",
    "ValidationError",
    "WatchServiceRequest",
    "WrongLoopError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
