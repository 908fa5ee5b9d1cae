"""Errors raised by polaris_sdk: one root, server codes mapped in one table.

The tree::

    PolarisError
    ├── ConfigError                 a configuration key has a wrong value
    │   └── ProtocolMismatchError   the address speaks another protocol (gRPC vs HTTP)
    ├── ValidationError             a request field breaks a rule; nothing was sent
    ├── ClosedError                 the SDKContext or facade is closed
    ├── WrongLoopError              an AsyncSDKContext used off its event loop
    ├── InstanceNotFoundError       no instance to answer a consumer call
    ├── CallAbortedError            a circuit breaker is open: the call was not made
    ├── NetworkError                the server could not be reached
    │   └── PolarisTimeoutError     the call ran past its deadline
    └── ServerError                 the server answered with a code other than success
        ├── BadRequestError             4xxxxx: the request is wrong; never retried
        │   ├── InvalidParameterError       a field the server rejected
        │   ├── ResourceNotFoundError       400202 and the 4003xx codes
        │   ├── HealthCheckDisabledError    400140: heartbeats are off on the server
        │   └── AuthError                   401xxx and 403xxx
        └── ServerInternalError         5xxxxx, and the transient 4xxxxx answers
                                        (throttling, conflicts, 400208): retriable

``error_for_code(code, info)`` turns a server code into the right exception;
``CODE_ERRORS`` is the table, with an entry for every ``v1.Code`` the naming
path can return.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AuthError",
    "BadRequestError",
    "CODE_ERRORS",
    "CallAbortedError",
    "ClosedError",
    "ConfigError",
    "HealthCheckDisabledError",
    "InstanceNotFoundError",
    "InvalidParameterError",
    "NetworkError",
    "PolarisError",
    "PolarisTimeoutError",
    "ProtocolMismatchError",
    "ResourceNotFoundError",
    "ServerError",
    "ServerInternalError",
    "ValidationError",
    "WrongLoopError",
    "error_for_code",
]


class PolarisError(Exception):
    """Root of every error polaris_sdk raises."""

    not_sent: bool = False
    """True when the SDK gave up before sending anything (so it says nothing
    about the server's reachability)."""


class ConfigError(PolarisError, ValueError):
    """A configuration value is wrong; ``key`` names it and the message the expected form."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ProtocolMismatchError(ConfigError):
    """The server at an address answered in another protocol than the one configured.

    Found on the first answer (a gRPC port asked over HTTP/1.1, or the HTTP
    API asked over gRPC) and never retried: another attempt gets the same
    answer. The message says which setting to change.
    """

    KEY = "global.serverConnector.protocol"

    def __init__(self, message: str) -> None:
        super().__init__(self.KEY, message)


class ValidationError(PolarisError, ValueError):
    """A request field breaks a rule of protocol.md; raised before anything is sent.

    ``field`` is the request field, ``rule`` says what it must be, and ``code``
    is the ``v1.Code`` a server answers for the same fault.
    """

    def __init__(self, field: str, rule: str, code: int) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.code = code


class ClosedError(PolarisError, RuntimeError):
    """The SDKContext (or the facade) has been closed."""


class WrongLoopError(PolarisError, RuntimeError):
    """An asyncio context was used from another event loop or thread, or without one."""


class InstanceNotFoundError(PolarisError, LookupError):
    """A consumer call found no instance of the service to answer with."""


class CallAbortedError(PolarisError, RuntimeError):
    """A circuit breaker refused the call. ``resource`` names what it guards, ``rule``
    the rule that opened it, ``fallback`` what the rule answers instead (or None)."""

    def __init__(self, resource: str, rule: str, fallback: object = None) -> None:
        super().__init__(f"circuit breaker of {resource} is open (rule {rule})")
        self.resource = resource
        self.rule = rule
        self.fallback = fallback


class NetworkError(PolarisError, ConnectionError):
    """No server address answered."""


class PolarisTimeoutError(NetworkError, TimeoutError):
    """The call did not complete before its deadline."""


class ServerError(PolarisError):
    """The server answered with ``code`` (a ``v1.Code``) and ``info``."""

    retriable: bool = False

    def __init__(self, code: int, info: str = "") -> None:
        message = f"{code} {info}".strip()
        if code in _HINTS:
            message += f": {_HINTS[code]}"
        super().__init__(message)
        self.code = code
        self.info = info


# What to do about an answer, added to its message.
_HINTS: Final[dict[int, str]] = {
    401002: "this server wants a token; set POLARIS_TOKEN or global.serverConnector.token",
    401004: "the server does not know this token; check POLARIS_TOKEN or"
    " global.serverConnector.token",
}


class BadRequestError(ServerError):
    """4xxxxx: the request itself is wrong; sending it again will not help."""


class InvalidParameterError(BadRequestError):
    """The server rejected a request field."""


class ResourceNotFoundError(BadRequestError, LookupError):
    """The named service, namespace or instance does not exist on the server."""


class HealthCheckDisabledError(BadRequestError):
    """Heartbeats were sent to a server whose health check is off (400140)."""


class AuthError(BadRequestError, PermissionError):
    """The token is missing, unknown or not allowed this operation."""


class ServerInternalError(ServerError):
    """5xxxxx: the server failed; the call may be retried."""

    retriable = True


# Every code the naming path (register, deregister, heartbeat, discover,
# report client) can return, with the exception it becomes.
CODE_ERRORS: Final[dict[int, type[ServerError]]] = {
    400000: BadRequestError,  # BadRequest
    400001: BadRequestError,  # ParseException
    400002: BadRequestError,  # EmptyRequest
    400003: BadRequestError,  # BatchSizeOverLimit
    400004: BadRequestError,  # InvalidDiscoverResource
    400100: InvalidParameterError,  # InvalidRequestID
    400102: AuthError,  # InvalidUserToken
    400103: InvalidParameterError,  # InvalidParameter
    400110: InvalidParameterError,  # InvalidNamespaceName
    400120: InvalidParameterError,  # InvalidServiceName
    400122: AuthError,  # InvalidServiceToken
    400123: InvalidParameterError,  # InvalidServiceMetadata
    400130: InvalidParameterError,  # InvalidInstanceID
    400131: InvalidParameterError,  # InvalidInstanceHost
    400132: InvalidParameterError,  # InvalidInstancePort
    400136: InvalidParameterError,  # InvalidInstanceProtocol
    400137: InvalidParameterError,  # InvalidInstanceVersion
    400138: InvalidParameterError,  # InvalidInstanceLogicSet
    400139: InvalidParameterError,  # InvalidInstanceIsolate
    400140: HealthCheckDisabledError,  # HealthCheckNotOpen
    400141: BadRequestError,  # HeartbeatOnDisabledIns
    400142: BadRequestError,  # HeartbeatExceedLimit
    400143: BadRequestError,  # HeartbeatTypeNotFound
    400150: InvalidParameterError,  # InvalidMetadata
    400201: BadRequestError,  # ExistedResource
    400202: ResourceNotFoundError,  # NotFoundResource
    400208: ServerInternalError,  # SameInstanceRequest: two in one batch window; retriable
    400230: BadRequestError,  # MaximumCapacityExceeded
    400301: ResourceNotFoundError,  # NotFoundService
    400303: ResourceNotFoundError,  # NotFoundInstance
    400305: ResourceNotFoundError,  # NotFoundNamespace
    400401: BadRequestError,  # ClientAPINotOpen
    400502: BadRequestError,  # NotAllowAliasCreateInstance
    401000: AuthError,  # Unauthorized
    401001: AuthError,  # NotAllowedAccess
    401002: AuthError,  # EmptyAutToken
    401003: AuthError,  # TokenDisabled
    401004: AuthError,  # TokenNotExisted
    403001: AuthError,  # AuthTokenForbidden
    403002: AuthError,  # OperationRoleForbidden
    403003: ServerInternalError,  # APIRateLimit: back off and try again
    409000: ServerInternalError,  # DataConflict: a concurrent write won; retriable
    429001: ServerInternalError,  # InstanceTooManyRequests
    429002: ServerInternalError,  # IPRateLimit
    500000: ServerInternalError,  # ExecuteException
    500001: ServerInternalError,  # StoreLayerException
    500007: ServerInternalError,  # HeartbeatException
    500008: ServerInternalError,  # InstanceRegisTimeout
}


def error_for_code(code: int, info: str = "") -> ServerError:
    """The exception for a server answer with ``code``; unknown codes by their class."""
    cls = CODE_ERRORS.get(code)
    if cls is None:
        if code // 1000 in (401, 403):
            cls = AuthError
        elif 400000 <= code < 500000:
            cls = BadRequestError
        else:
            cls = ServerInternalError
    return cls(code, info)
