"""httpx transports that resolve service names through a consumer.

Mount one on a client and ``http://greeter/hello`` goes to an instance of
``greeter``::

    consumer = ConsumerAPI.create(addresses=["127.0.0.1:8091"])
    client = httpx.Client(transport=PolarisTransport(consumer))
    client.get("http://greeter/hello")

Contract:

* Which hosts name services (``greeter``, ``<service>.<namespace>.polaris``)
  is :func:`polaris_sdk.integrations._calls.service_of`; other hosts go
  through the inner transport untouched.
* Each attempt picks an instance with ``get_one_instance`` (so open
  circuit breakers are avoided), rewrites the URL's host and port to it
  (the ``Host`` header keeps the service name) and reports the outcome and
  latency with ``update_service_call_result``.
* A request that could not be sent at all (connection refused or
  unreachable, connect timeout) is retried on another instance, ``retries``
  more times (default 2); so is a request of an idempotent method whose
  connection broke before any answer came (reset, closed: a kept-alive
  connection to a process that just died), as Go's net/http does. With
  ``retry_idempotent=True``, timeouts, other transport errors and 5xx
  answers of idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) are
  retried too. A retry never goes to an
  instance this request already tried; with none left, the last error is
  raised (or the last 5xx answer returned). Requests with a streaming body
  are not retried.
* The inner transport (default a new ``httpx.HTTPTransport``) is closed with
  this one when it was made here.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from polaris_sdk.integrations._calls import Attempts, may_retry, result_fields, service_of
from polaris_sdk.model import DEFAULT_NAMESPACE, Instance

__all__ = ["AsyncPolarisTransport", "PolarisTransport"]

_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
_BROKEN = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _outcome(exc: httpx.TransportError) -> tuple[str, bool]:
    """(ret_status, whether the connection broke before any answer)."""
    if isinstance(exc, _UNREACHABLE):
        return "unreachable", False
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", False
    return "fail", isinstance(exc, _BROKEN)


def _routed(request: httpx.Request, instance: Instance) -> httpx.Request:
    return httpx.Request(
        request.method,
        request.url.copy_with(host=instance.host, port=instance.port),
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


class _Options:
    def __init__(self, namespace: str, retries: int, retry_idempotent: bool) -> None:
        if type(retries) is not int or retries < 0:
            raise ValueError("retries must be an int >= 0")
        self.namespace = namespace or DEFAULT_NAMESPACE
        self.retries = retries
        self.retry_idempotent = retry_idempotent

    def plan(self, request: httpx.Request) -> tuple[str, str, int, bool, bool] | None:
        """(namespace, service, attempts, idempotent method, retry it on any failure),
        or None to pass the request through."""
        target = service_of(request.url.host, self.namespace)
        if target is None:
            return None
        attempts = 1 + self.retries if _replayable(request) else 1
        safe = may_retry(request.method, True)
        return target[0], target[1], attempts, safe, safe and self.retry_idempotent


class PolarisTransport(httpx.BaseTransport):
    """A blocking httpx transport over a :class:`~polaris_sdk.ConsumerAPI`."""

    def __init__(
        self,
        consumer: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        retries: int = 2,
        retry_idempotent: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._consumer = consumer
        self._options = _Options(namespace, retries, retry_idempotent)
        self._owns_inner = transport is None
        self._inner = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._options.plan(request)
        if plan is None:
            return self._inner.handle_request(request)
        namespace, service, attempts, safe, idempotent = plan
        tried = Attempts()
        failure: httpx.TransportError | None = None
        answer: httpx.Response | None = None
        for attempt in range(attempts):
            instance = self._pick(namespace, service, tried)
            if instance is None:
                break
            last = attempt == attempts - 1
            started = time.monotonic()
            try:
                response = self._inner.handle_request(_routed(request, instance))
            except httpx.TransportError as exc:
                status, broken = _outcome(exc)
                self._report(namespace, service, instance, request, started, status, None)
                tried.failed(instance)
                failure = exc
                if last or not (status == "unreachable" or idempotent or (broken and safe)):
                    raise
                continue
            code = response.status_code
            self._report(namespace, service, instance, request, started, "success", code)
            if code >= 500 and idempotent and not last:
                tried.failed(instance)
                if answer is not None:
                    answer.close()
                answer = response
                continue
            return response
        if answer is not None:
            return answer
        assert failure is not None
        raise failure

    def close(self) -> None:
        if self._owns_inner:
            self._inner.close()

    def _pick(self, namespace: str, service: str, tried: Attempts) -> Instance | None:
        for _ in tried.picks():
            instance: Instance = self._consumer.get_one_instance(
                namespace=namespace, service=service
            )
            if tried.fresh(instance):
                return instance
        return tried.other(self._consumer.get_instances(namespace=namespace, service=service))

    def _report(
        self,
        namespace: str,
        service: str,
        instance: Instance,
        request: httpx.Request,
        started: float,
        status: str,
        code: int | None,
    ) -> None:
        fields = result_fields(
            namespace, service, instance, request.url.path, time.monotonic() - started
        )
        self._consumer.update_service_call_result(ret_status=status, ret_code=code, **fields)


class AsyncPolarisTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`PolarisTransport`, over an AsyncConsumerAPI."""

    def __init__(
        self,
        consumer: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        retries: int = 2,
        retry_idempotent: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._consumer = consumer
        self._options = _Options(namespace, retries, retry_idempotent)
        self._owns_inner = transport is None
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._options.plan(request)
        if plan is None:
            return await self._inner.handle_async_request(request)
        namespace, service, attempts, safe, idempotent = plan
        tried = Attempts()
        failure: httpx.TransportError | None = None
        answer: httpx.Response | None = None
        for attempt in range(attempts):
            instance = await self._pick(namespace, service, tried)
            if instance is None:
                break
            last = attempt == attempts - 1
            started = time.monotonic()
            try:
                response = await self._inner.handle_async_request(_routed(request, instance))
            except httpx.TransportError as exc:
                status, broken = _outcome(exc)
                await self._report(namespace, service, instance, request, started, status, None)
                tried.failed(instance)
                failure = exc
                if last or not (status == "unreachable" or idempotent or (broken and safe)):
                    raise
                continue
            code = response.status_code
            await self._report(namespace, service, instance, request, started, "success", code)
            if code >= 500 and idempotent and not last:
                tried.failed(instance)
                if answer is not None:
                    await answer.aclose()
                answer = response
                continue
            return response
        if answer is not None:
            return answer
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        if self._owns_inner:
            await self._inner.aclose()

    async def _pick(self, namespace: str, service: str, tried: Attempts) -> Instance | None:
        for _ in tried.picks():
            instance: Instance = await self._consumer.get_one_instance(
                namespace=namespace, service=service
            )
            if tried.fresh(instance):
                return instance
        candidates = await self._consumer.get_instances(namespace=namespace, service=service)
        return tried.other(candidates)

    async def _report(
        self,
        namespace: str,
        service: str,
        instance: Instance,
        request: httpx.Request,
        started: float,
        status: str,
        code: int | None,
    ) -> None:
        fields = result_fields(
            namespace, service, instance, request.url.path, time.monotonic() - started
        )
        await self._consumer.update_service_call_result(ret_status=status, ret_code=code, **fields)
