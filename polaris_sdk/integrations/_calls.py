"""What the HTTP integrations share: which hosts name services, what a failure means.

Contract (pure, no I/O; used by the httpx and requests integrations):

* :func:`service_of` maps a URL host to ``(namespace, service)`` or None
  (the request is sent as it is):

  - a single label (``greeter``) is a service of the transport's namespace,
    except ``localhost``;
  - ``<service>.<namespace>.polaris`` names a namespace too, and a service
    name with dots (``api.v1.greeter.prod.polaris`` is service
    ``api.v1.greeter`` in namespace ``prod``);
  - anything else (a dotted DNS name, an IP address) is not a service.

* Outcomes, in the circuit breaker's terms: a connection that could not be
  made (refused, unreachable, connect timeout) is ``unreachable`` and is
  retried on another instance (the request was never sent); a timeout after
  that is ``timeout``; any other transport error ``fail``; an answer is a
  ``success`` with its status as ``ret_code`` (5xx count as errors). A
  request of an idempotent method whose connection broke before any answer
  (reset or closed, typically a kept-alive connection to a process that
  just died) is ``fail`` and retried too, as Go's net/http does. Timeouts,
  other transport errors and 5xx answers are retried only when the caller
  opts in, and only for idempotent methods.
* :class:`Attempts` remembers the instances one request tried, so a retry
  never goes back to an instance that just failed.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Any, Final

from polaris_sdk.model import Instance

__all__ = [
    "EXPLICIT_SUFFIX",
    "IDEMPOTENT",
    "Attempts",
    "may_retry",
    "method_of",
    "result_fields",
    "service_of",
]

EXPLICIT_SUFFIX: Final = ".polaris"
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_MAX_METHOD: Final = 1024
_PICKS: Final = 3


def service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """The (namespace, service) a URL host names, or None when it names no service."""
    host = host.rstrip(".").lower()
    if host.endswith(EXPLICIT_SUFFIX):
        service, sep, space = host[: -len(EXPLICIT_SUFFIX)].rpartition(".")
        if sep and service and space:
            return space, service
        return None
    if not host or "." in host or ":" in host or host == "localhost":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return namespace, host
    return None


def method_of(path: str) -> str:
    return path[:_MAX_METHOD]


class Attempts:
    """The instances one request has tried."""

    __slots__ = ("tried",)

    def __init__(self) -> None:
        self.tried: set[tuple[str, int]] = set()

    def fresh(self, instance: Instance) -> bool:
        return (instance.host, instance.port) not in self.tried

    def failed(self, instance: Instance) -> None:
        self.tried.add((instance.host, instance.port))

    def other(self, candidates: Iterable[Instance]) -> Instance | None:
        rest = [i for i in candidates if (i.host, i.port) not in self.tried]
        return random.choice(rest) if rest else None

    @staticmethod
    def picks() -> range:
        """How many balancer picks to try before choosing among the rest."""
        return range(_PICKS)


def may_retry(method: str, opted_in: bool) -> bool:
    return opted_in and method.upper() in IDEMPOTENT


def result_fields(
    namespace: str, service: str, instance: Instance, path: str, delay: float
) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "service": service,
        "instance": instance,
        "method": method_of(path),
        "delay": delay,
    }
