"""The naming calls every transport offers, written once over one exchange.

:class:`NamingConnector` implements
:class:`~polaris_sdk.connector.base.ServerConnector` (register, deregister,
heartbeat, report client, discover) in terms of two transport hooks:
``_unary(name, request, timeout)`` sends one ``v1`` request message and
returns the answer message, and ``_discover(request, timeout)`` does the same
for Discover (by default through ``_unary``). A transport subclass adds only
how bytes move: the gRPC channel and Discover stream, or HTTP POSTs.

Contract (on top of :mod:`polaris_sdk.connector.base`):

* One hook call is one attempt and lasts at most ``timeout`` seconds, which
  is ``messageTimeout`` or less when the call's deadline is nearer; for
  Discover, whose answer grows with the service, it is the time left until
  the call's deadline. The hook
  raises a :class:`~polaris_sdk.errors.PolarisError` for failures it sees
  (unreachable, no answer in time) and returns the answer otherwise.
* The answer's ``code`` decides the outcome here, in one place: success
  (and 200001 for Discover) returns; every other code becomes its error via
  :func:`~polaris_sdk.errors.error_for_code`. Only retriable failures are
  retried, within the call's deadline (:mod:`polaris_sdk.connector.retry`).
* ``close()`` is idempotent; afterwards every call raises
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final

from polaris_sdk import wire
from polaris_sdk.config import Configuration
from polaris_sdk.connector.retry import RetryPolicy, call_with_retry
from polaris_sdk.errors import ClosedError, error_for_code
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
    "EXISTED_RESOURCE",
    "SUCCESS",
    "USER_AGENT",
    "NamingConnector",
    "new_request_id",
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
_SDK_CLIENT_TYPE: Final = (
    wire.POOL.FindEnumTypeByName("v1.Client.ClientType").values_by_name["SDK"].number
)
_INSTANCE_DISCOVER: Final = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number


def new_request_id() -> str:
    """A fresh ``request-id`` header value."""
    return uuid.uuid4().hex


class NamingConnector(ABC):
    """The naming API over a transport's exchange; see the module doc."""

    def __init__(self, config: Configuration) -> None:
        sc = config.server_connector
        self._config = config
        self._token = sc.token
        self._message_timeout = sc.message_timeout
        self._api_timeout = config.api.timeout
        self._policy = RetryPolicy(
            max_retries=config.api.max_retry_times, initial=config.api.retry_interval
        )
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._config.server_connector.addresses

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    # ------------------------------------------------------ transport hooks

    @abstractmethod
    def _unary(self, name: str, request: Any, timeout: float) -> Any:
        """Send ``request`` as ``v1.PolarisGRPC/<name>``; the answer message."""

    def _discover(self, request: Any, timeout: float) -> Any:
        """One Discover request and its answer."""
        return self._unary("Discover", request, timeout)

    @abstractmethod
    def _release(self) -> None:
        """Free the transport's connections and threads; called once, by close()."""

    # ------------------------------------------------------------ naming API

    def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse:
        msg = register_request_to_wire(req, ttl)
        resp = self._call_checked("RegisterInstance", msg, timeout, ok=(SUCCESS, EXISTED_RESOURCE))
        given = resp.instance.id.value if resp.HasField("instance") else ""
        iid = (
            given
            or req.instance_id
            or instance_id(req.namespace, req.service, req.host, req.port, req.vpc_id)
        )
        return InstanceRegisterResponse(
            instance_id=iid, existed=resp.code.value == EXISTED_RESOURCE
        )

    def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        self._call_checked("DeregisterInstance", instance_key_to_wire(req), timeout)

    def heartbeat(self, req: InstanceHeartbeatRequest, *, timeout: float | None = None) -> None:
        self._call_checked("Heartbeat", instance_key_to_wire(req), timeout)

    def report_client(self, host: str, version: str = "", *, timeout: float | None = None) -> None:
        msg = wire.Client(
            host=wire.StringValue(value=host), version=wire.StringValue(value=version)
        )
        msg.type = _SDK_CLIENT_TYPE
        self._call_checked("ReportClient", msg, timeout)

    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        request = wire.DiscoverRequest(
            type=_INSTANCE_DISCOVER,
            service=wire.Service(
                name=wire.StringValue(value=key.service),
                namespace=wire.StringValue(value=key.namespace),
                revision=wire.StringValue(value=revision),
            ),
        )

        def attempt(remaining: float) -> Any:
            self._check_open()
            resp = self._discover(request, self._discover_timeout(remaining))
            code = resp.code.value
            if code not in (SUCCESS, DATA_NO_CHANGE):
                raise error_for_code(code, resp.info.value)
            return resp

        resp = self._retry(attempt, timeout, f"Discover {key}")
        if resp.code.value == DATA_NO_CHANGE:
            return None
        return service_instances_from_wire(resp, key.namespace, key.service)

    # -------------------------------------------------------------- calling

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the connector is closed")

    def _attempt_timeout(self, remaining: float) -> float:
        # One attempt waits at most messageTimeout, so a wedged server is
        # given up on (and another address tried) while the call has time.
        return max(0.001, min(self._message_timeout, remaining))

    @staticmethod
    def _discover_timeout(remaining: float) -> float:
        # A Discover answer carries the whole service (20,000 instances are
        # about 5 MB, decoded in hundreds of milliseconds on a busy machine),
        # and a gRPC exchange given up may break the stream every caller
        # shares: it may use the call's whole remaining time.
        return max(0.001, remaining)

    def _retry(self, attempt: Callable[[float], Any], timeout: float | None, what: str) -> Any:
        self._check_open()
        budget = self._api_timeout if timeout is None else timeout
        return call_with_retry(attempt, timeout=budget, policy=self._policy, what=what)

    def _call_checked(
        self,
        name: str,
        request: Any,
        timeout: float | None,
        ok: tuple[int, ...] = (SUCCESS,),
    ) -> Any:
        def attempt(remaining: float) -> Any:
            self._check_open()
            resp = self._unary(name, request, self._attempt_timeout(remaining))
            code = resp.code.value
            if code not in ok:
                raise error_for_code(code, resp.info.value)
            return resp

        return self._retry(attempt, timeout, name)
