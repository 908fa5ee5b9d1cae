"""CircuitBreakerAPI: circuit breaking for calls that are not HTTP or gRPC requests.

Contract:

* ``CircuitBreakerAPI(consumer)`` works over a :class:`~polaris_sdk.ConsumerAPI`
  or an :class:`~polaris_sdk.AsyncConsumerAPI` and shares its breakers: an
  instance resource is the same breaker that selection reads.
* A :class:`~polaris_sdk.model.Resource` names a service, a method of it,
  or an instance. The server's rule of that level applies (Discover
  CIRCUIT_BREAKER, refreshed like instances); without one the default rule
  (:data:`~polaris_sdk.consumer.circuitbreaker.DEFAULT_RULE`).
* :meth:`check` says whether a call may go now (in HALF_OPEN each allowed
  check is one of the probes); :meth:`report` counts its outcome;
  :meth:`protect` decorates a function (plain or ``async def``) to do
  both: a refused call returns ``fallback(*args, **kwargs)`` when given, else
  raises :class:`~polaris_sdk.errors.CallAbortedError`; an exception counts
  as ``fail`` (``timeout`` for a :class:`TimeoutError`) and propagates.
* No I/O on any path; thread-safe as the consumer it is built on.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from polaris_sdk._requests import coerce_request
from polaris_sdk.consumer.breakers import CheckResult, CircuitBreakers, ServiceBreakers
from polaris_sdk.consumer.circuitbreaker import FAIL, SUCCESS, TIMEOUT, Breaker, check_outcome
from polaris_sdk.errors import CallAbortedError, ValidationError
from polaris_sdk.model import DEFAULT_NAMESPACE, Resource
from polaris_sdk.validation import INVALID_PARAMETER, check_namespace, check_port, check_service

__all__ = ["CheckResult", "CircuitBreakerAPI"]

F = TypeVar("F", bound=Callable[..., Any])


class CircuitBreakerAPI:
    """Check and report calls to services, methods and instances."""

    def __init__(self, consumer: Any) -> None:
        breakers = getattr(consumer, "_breakers", None)
        if not isinstance(breakers, CircuitBreakers):
            raise TypeError("CircuitBreakerAPI needs a ConsumerAPI or an AsyncConsumerAPI")
        self._consumer = consumer
        self._breakers = breakers

    def check(self, resource: Resource | None = None, /, **fields: Any) -> CheckResult:
        """Whether a call to ``resource`` may go now."""
        found, breaker, level, name = self._resolve(coerce_request(Resource, resource, fields))
        return self._breakers.allow(found, level, name, breaker)

    def report(
        self,
        resource: Resource,
        ret_status: str = SUCCESS,
        ret_code: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Count one call's outcome (``delay`` in seconds)."""
        check_outcome(ret_status, ret_code, delay)
        found, breaker, level, name = self._resolve(coerce_request(Resource, resource, {}))
        self._breakers.record(found, level, name, breaker, ret_status, ret_code, delay)

    def state(self, resource: Resource | None = None, /, **fields: Any) -> str:
        """``closed``, ``open`` or ``half_open``."""
        found, breaker, level, _ = self._resolve(coerce_request(Resource, resource, fields))
        if breaker.advance(self._breakers.clock()) is not None and level == "instance":
            with found.lock:
                found.recount()
        return breaker.state.value

    def protect(
        self, resource: Resource, *, fallback: Callable[..., Any] | None = None
    ) -> Callable[[F], F]:
        """A decorator: check before each call, report after it."""
        self._resolve(resource)  # bad resources fail at decoration time

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    refused = self._refused(resource)
                    if refused is not None:
                        if fallback is not None:
                            return await _maybe_await(fallback(*args, **kwargs))
                        raise refused
                    started = time.monotonic()
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        self._failed(resource, exc, started)
                        raise
                    self.report(resource, SUCCESS, delay=time.monotonic() - started)
                    return result

                return cast(F, run_async)

            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                refused = self._refused(resource)
                if refused is not None:
                    if fallback is not None:
                        return fallback(*args, **kwargs)
                    raise refused
                started = time.monotonic()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._failed(resource, exc, started)
                    raise
                self.report(resource, SUCCESS, delay=time.monotonic() - started)
                return result

            return cast(F, run)

        return decorate

    # ------------------------------------------------------------ helpers

    def _refused(self, resource: Resource) -> CallAbortedError | None:
        result = self.check(resource)
        if result.allowed:
            return None
        return CallAbortedError(_describe(resource), result.rule, result.fallback)

    def _failed(self, resource: Resource, exc: BaseException, started: float) -> None:
        if isinstance(exc, Exception):
            status = TIMEOUT if isinstance(exc, TimeoutError) else FAIL
            self.report(resource, status, delay=time.monotonic() - started)

    def _resolve(self, resource: Resource) -> tuple[ServiceBreakers, Breaker, str, str]:
        namespace = resource.namespace or DEFAULT_NAMESPACE
        try:
            known = self._breakers.get(namespace, resource.service) is not None
        except TypeError:
            known = False
        if not known:
            check_namespace(namespace)
            check_service(resource.service)
        if not isinstance(resource.method, str) or not isinstance(resource.host, str):
            raise ValidationError("method", "method and host must be str", INVALID_PARAMETER)
        level = resource.level
        address = None
        if level == "instance":
            address = (resource.host, check_port(resource.port))
        found = self._breakers.breaker_for(
            namespace, resource.service, level, resource.method, address
        )
        if found is None:
            raise ValidationError("resource", "too many resources are tracked", INVALID_PARAMETER)
        services, breaker, name = found
        return services, breaker, level, name


def _describe(resource: Resource) -> str:
    where = f"{resource.namespace}/{resource.service}"
    if resource.host:
        return f"{where} {resource.host}:{resource.port}"
    return f"{where} {resource.method}".rstrip()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
