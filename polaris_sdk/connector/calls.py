"""The naming calls without I/O: what to send, and what an answer means.

Contract:

* Each builder (:func:`register`, :func:`deregister`, :func:`heartbeat`,
  :func:`report_client`, :func:`discover`) turns SDK values into a
  :class:`Call`: the ``v1.PolarisGRPC`` method, the wire request and the
  answer codes that count as success. Builders are pure; they do not
  validate (that is :mod:`polaris_sdk.validation`'s job, done by the facades).
* :meth:`Call.judge` decides an answer in one place for every transport and
  front end: a success code returns the answer message, any other code
  raises its error through :func:`~polaris_sdk.errors.error_for_code`.
  Whether that error is worth another attempt is
  :func:`polaris_sdk.connector.retry.is_retriable`'s decision.
* :meth:`Call.attempt_timeout` says how long one attempt may wait: at most
  ``messageTimeout`` (so a wedged server is given up on while the call still
  has time for another address), except a Discover, whose answer grows with
  the service, which may use the time left until the call's deadline.
* The ``*_result`` functions turn a judged answer into the SDK's values.

The drivers (:mod:`polaris_sdk.connector.naming`: blocking and asyncio) do
the waiting; the transports (gRPC, grpc.aio, httpx, httpx async, a mock)
move one request and its answer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from polaris_sdk import wire
from polaris_sdk.errors import error_for_code
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ServiceInstances,
    ServiceKey,
    instance_key_to_wire,
    register_request_to_wire,
    service_instances_from_wire,
)
from polaris_sdk.validation import instance_id

__all__ = [
    "DATA_NO_CHANGE",
    "DISCOVER",
    "EXISTED_RESOURCE",
    "SUCCESS",
    "USER_AGENT",
    "Call",
    "deregister",
    "discover",
    "discover_result",
    "heartbeat",
    "new_request_id",
    "register",
    "register_result",
    "report_client",
]


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("polarismesh-sdk")
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT: Final = f"polaris-sdk-python/{_sdk_version()}"
SUCCESS: Final = 200000
DATA_NO_CHANGE: Final = 200001
EXISTED_RESOURCE: Final = 400201
DISCOVER: Final = "Discover"
_MIN_ATTEMPT: Final = 0.001
_SDK_CLIENT_TYPE: Final = (
    wire.POOL.FindEnumTypeByName("v1.Client.ClientType").values_by_name["SDK"].number
)
_INSTANCE_DISCOVER: Final = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number
_BUILT_CALLS: Final = 8192
K = TypeVar("K", bound=Hashable)


_request_prefix = ""
_request_seq = itertools.count()


def _new_request_prefix() -> None:
    global _request_prefix, _request_seq
    _request_prefix = secrets.token_hex(8)
    _request_seq = itertools.count()


_new_request_prefix()
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_new_request_prefix)


def new_request_id() -> str:
    """A fresh ``request-id`` header value: 32 hex digits, unique per process
    (a random prefix drawn at start and in each forked child, then a counter),
    at a fraction of the cost of a ``uuid4`` per request."""
    return f"{_request_prefix}{next(_request_seq):016x}"


@dataclass(frozen=True, slots=True)
class Call:
    """One naming request: the method, its wire message and its success codes."""

    method: str
    request: Any
    ok: tuple[int, ...] = (SUCCESS,)
    what: str = ""
    """How log lines and errors name the call (default: the method)."""

    @property
    def label(self) -> str:
        return self.what or self.method

    @property
    def is_discover(self) -> bool:
        return self.method == DISCOVER

    def judge(self, answer: Any) -> Any:
        """``answer`` if its code is a success; otherwise raise the code's error."""
        code = answer.code.value
        if code not in self.ok:
            raise error_for_code(code, answer.info.value)
        return answer

    def attempt_timeout(self, remaining: float, message_timeout: float) -> float:
        """Seconds one attempt may wait when ``remaining`` are left of the call."""
        if self.is_discover:
            # A Discover answer carries the whole service (20,000 instances
            # are about 5 MB, decoded in hundreds of milliseconds on a busy
            # machine), and a gRPC exchange given up may break the stream
            # every caller shares: it may use the call's whole remaining time.
            return max(_MIN_ATTEMPT, remaining)
        return max(_MIN_ATTEMPT, min(message_timeout, remaining))


def register(req: InstanceRegisterRequest, ttl: int | None) -> Call:
    """RegisterInstance; ``ttl`` (seconds) turns heartbeat health checks on."""
    return Call(
        "RegisterInstance", register_request_to_wire(req, ttl), ok=(SUCCESS, EXISTED_RESOURCE)
    )


def register_result(req: InstanceRegisterRequest, answer: Any) -> InstanceRegisterResponse:
    """The SDK's answer to a judged RegisterInstance."""
    given = answer.instance.id.value if answer.HasField("instance") else ""
    iid = (
        given
        or req.instance_id
        or instance_id(req.namespace, req.service, req.host, req.port, req.vpc_id)
    )
    return InstanceRegisterResponse(instance_id=iid, existed=answer.code.value == EXISTED_RESOURCE)


def deregister(req: InstanceDeregisterRequest) -> Call:
    """DeregisterInstance; an unknown instance is not an error."""
    return Call("DeregisterInstance", instance_key_to_wire(req))


class _Built(Generic[K]):
    """Calls built once and reused while asked for again (bounded, oldest dropped first).

    A :class:`Call` and its message are never changed after they are built,
    so one may be sent by any number of threads at once. Thread-safe: a race
    at worst builds a call twice.
    """

    __slots__ = ("_calls", "_size")

    def __init__(self, size: int = _BUILT_CALLS) -> None:
        self._size = size
        self._calls: dict[K, Call] = {}

    def get(self, key: K, build: Callable[[], Call]) -> Call:
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = build()
            if len(self._calls) > self._size:
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                    del self._calls[next(iter(self._calls))]
        return call


_heartbeats: _Built[InstanceHeartbeatRequest] = _Built()
_discovers: _Built[tuple[ServiceKey, str]] = _Built()


def heartbeat(req: InstanceHeartbeatRequest) -> Call:
    """Heartbeat; ResourceNotFoundError when the server no longer knows the instance.

    Built once per request and reused: a registration beats with the same one.
    """
    return _heartbeats.get(req, lambda: Call("Heartbeat", instance_key_to_wire(req)))


def report_client(host: str, version: str = "") -> Call:
    msg = wire.Client(host=wire.StringValue(value=host), version=wire.StringValue(value=version))
    msg.type = _SDK_CLIENT_TYPE
    return Call("ReportClient", msg)


def discover(key: ServiceKey, revision: str = "") -> Call:
    """Discover INSTANCE of ``key``; 200001 when ``revision`` is still current.

    Built once per (service, revision) and reused: an idle service's every
    revision check sends the same call.
    """
    return _discovers.get((key, revision), lambda: _discover(key, revision))


def _discover(key: ServiceKey, revision: str) -> Call:
    request = wire.DiscoverRequest(
        type=_INSTANCE_DISCOVER,
        service=wire.Service(
            name=wire.StringValue(value=key.service),
            namespace=wire.StringValue(value=key.namespace),
            revision=wire.StringValue(value=revision),
        ),
    )
    return Call(DISCOVER, request, ok=(SUCCESS, DATA_NO_CHANGE), what=f"Discover {key}")


def discover_result(key: ServiceKey, answer: Any) -> ServiceInstances | None:
    """The snapshot a judged Discover carries; None for 200001 (unchanged)."""
    if answer.code.value == DATA_NO_CHANGE:
        return None
    return service_instances_from_wire(answer, key.namespace, key.service)
