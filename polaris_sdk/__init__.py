"""polaris_sdk: a Python SDK for the PolarisMesh service registry.

The public API is re-exported here; ``__all__`` lists it.
"""

from polaris_sdk.config import Configuration
from polaris_sdk.consumer import ConnectionState, ConsumerAPI
from polaris_sdk.context import SDKContext
from polaris_sdk.errors import (
    AuthError,
    BadRequestError,
    ClosedError,
    ConfigError,
    InstanceNotFoundError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    ResourceNotFoundError,
    ServerError,
    ValidationError,
)
from polaris_sdk.model import (
    GetAllInstancesRequest,
    GetInstancesRequest,
    GetOneInstanceRequest,
    Instance,
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ServiceChangeEvent,
    ServiceInstances,
    ServiceKey,
    WatchServiceRequest,
)
from polaris_sdk.provider import ProviderAPI

__version__ = "0.1.0.dev0"

__all__ = [
    "AuthError",
    "BadRequestError",
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
    "PolarisError",
    "PolarisTimeoutError",
    "ProviderAPI",
    "ResourceNotFoundError",
    "SDKContext",
    "ServerError",
    "ServiceChangeEvent",
    "ServiceInstances",
    "ServiceKey",
    "ValidationError",
    "WatchServiceRequest",
    "__version__",
]
