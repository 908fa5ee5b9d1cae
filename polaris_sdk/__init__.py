"""polaris_sdk: a Python SDK for the PolarisMesh service registry.

The public API is re-exported here; ``__all__`` lists it.
"""

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

__version__ = "0.1.0.dev0"

__all__ = [
    "AuthError",
    "BadRequestError",
    "ClosedError",
    "ConfigError",
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
    "ResourceNotFoundError",
    "ServerError",
    "ServiceChangeEvent",
    "ServiceInstances",
    "ServiceKey",
    "ValidationError",
    "WatchServiceRequest",
    "__version__",
]
