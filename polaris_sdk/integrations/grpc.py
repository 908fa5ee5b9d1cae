"""gRPC channels that pick an instance of a service for every call.

grpcio has no pluggable name resolver for Python (grpc/grpc#11685), so this
module offers channel objects instead::

    consumer = ConsumerAPI.create(addresses=["127.0.0.1:8091"])
    with channel("greeter", consumer=consumer) as ch:
        say_hello = ch.unary_unary("/greeter.Greeter/SayHello")
        say_hello(b"hi", timeout=2)

Contract:

* :func:`channel` returns a ``grpc.Channel``, :func:`aio_channel` a
  ``grpc.aio.Channel`` (over an AsyncConsumerAPI). Every call picks an
  instance with ``get_one_instance`` and goes through a sub-channel to that
  address (``grpc.insecure_channel`` or ``grpc.secure_channel`` with
  ``credentials``), made on first use and kept while the instance is in the
  service; sub-channels of instances that left are closed when the
  service's snapshot changes, and all of them by ``close()``.
* Unary-unary calls are reported with ``update_service_call_result``:
  ``UNAVAILABLE`` whose connection could not be made ("failed to connect")
  as ``unreachable``, retried on another instance ``retries`` more times
  (default 2; the request never reached a server); other ``UNAVAILABLE`` as
  ``fail`` and ``DEADLINE_EXCEEDED`` as ``timeout``, not retried; any other
  status as a success carrying its code. A retry never goes back to an
  instance this call already tried.
* Streaming calls on :func:`channel` pick an instance per call too, and are
  neither retried nor reported (their outcome is known only as the stream
  is read); :func:`aio_channel` offers unary-unary calls only.
* The asyncio multicallables return a coroutine (await it for the
  response), not a full ``grpc.aio.Call`` object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from polaris_sdk.integrations._calls import Attempts
from polaris_sdk.model import DEFAULT_NAMESPACE, Instance

__all__ = ["aio_channel", "channel"]

Address = tuple[str, int]


def _outcome(error: grpc.RpcError) -> tuple[str, int | None]:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if code is grpc.StatusCode.UNAVAILABLE:
        details = (error.details() if hasattr(error, "details") else "") or ""
        if "failed to connect" in details.lower():
            return "unreachable", None
        return "fail", None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout", None
    return "success", code.value[0]


class _Pool:
    """Sub-channels per instance address; what both channel kinds share."""

    def __init__(
        self,
        service: str,
        namespace: str,
        credentials: grpc.ChannelCredentials | None,
        options: Any,
        make: Callable[..., Any],
        make_secure: Callable[..., Any],
    ) -> None:
        self.service = service
        self.namespace = namespace or DEFAULT_NAMESPACE
        self._credentials = credentials
        self._options = options
        self._make = make
        self._make_secure = make_secure
        self._channels: dict[Address, Any] = {}
        self._revision: str | None = None
        self._lock = threading.Lock()
        self.closed = False

    def sub_channel(self, instance: Instance) -> Any:
        address = (instance.host, instance.port)
        found = self._channels.get(address)
        if found is not None:
            return found
        with self._lock:
            if self.closed:
                raise ValueError("the channel is closed")
            found = self._channels.get(address)
            if found is None:
                target = f"{instance.host}:{instance.port}"
                if self._credentials is None:
                    found = self._make(target, options=self._options)
                else:
                    found = self._make_secure(target, self._credentials, options=self._options)
                self._channels[address] = found
            return found

    def stale(self, revision: str, present: set[Address]) -> list[Any]:
        """Take out the sub-channels of addresses no longer in the service."""
        with self._lock:
            if revision == self._revision:
                return []
            self._revision = revision
            gone = [a for a in self._channels if a not in present]
            return [self._channels.pop(a) for a in gone]

    def take_all(self) -> list[Any]:
        with self._lock:
            self.closed = True
            channels, self._channels = list(self._channels.values()), {}
            return channels

    def report_fields(self, instance: Instance, method: str, started: float) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "service": self.service,
            "instance": instance,
            "method": method[:1024],
            "delay": time.monotonic() - started,
        }


class _UnaryUnary:
    def __init__(self, owner: _Channel, method: str, serializer: Any, deserializer: Any) -> None:
        self._owner = owner
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._owner.invoke(self, request, timeout, kwargs, with_call=False)

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._owner.invoke(self, request, timeout, kwargs, with_call=True)

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        sub = self._owner.pick_channel(Attempts())[1]
        return sub.unary_unary(self._method, self._serializer, self._deserializer).future(
            request, timeout, **kwargs
        )

    def target(self, sub: Any) -> Any:
        return sub.unary_unary(self._method, self._serializer, self._deserializer)


class _Picked:
    """A streaming multicallable: one instance per call, delegated as it is."""

    def __init__(self, owner: Any, kind: str, method: str, serializer: Any, deser: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deser

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sub = self._owner.pick_channel(Attempts())[1]
        callable_ = getattr(sub, self._kind)(self._method, self._serializer, self._deserializer)
        return callable_(*args, **kwargs)


class _Channel(grpc.Channel):
    """A ``grpc.Channel`` that picks an instance of a service per call."""

    def __init__(self, pool: _Pool, consumer: Any, retries: int) -> None:
        self._pool = pool
        self._consumer = consumer
        self._retries = retries

    def pick_channel(self, tried: Attempts) -> tuple[Instance, Any]:
        pool = self._pool
        instance: Instance | None = None
        for _ in tried.picks():
            picked: Instance = self._consumer.get_one_instance(
                namespace=pool.namespace, service=pool.service
            )
            if tried.fresh(picked):
                instance = picked
                break
        if instance is None:
            rest = self._consumer.get_instances(namespace=pool.namespace, service=pool.service)
            instance = tried.other(rest)
            if instance is None:
                raise LookupError("no untried instance")
        self._prune()
        return instance, pool.sub_channel(instance)

    def invoke(
        self, call: _UnaryUnary, request: Any, timeout: Any, kwargs: Any, with_call: bool
    ) -> Any:
        tried = Attempts()
        last_error: grpc.RpcError | None = None
        for attempt in range(1 + self._retries):
            try:
                instance, sub = self.pick_channel(tried)
            except LookupError:
                break
            target = call.target(sub)
            started = time.monotonic()
            try:
                if with_call:
                    result = target.with_call(request, timeout, **kwargs)
                else:
                    result = target(request, timeout, **kwargs)
            except grpc.RpcError as error:
                status, code = _outcome(error)
                self._report(instance, call, started, status, code)
                tried.failed(instance)
                if status != "unreachable" or attempt == self._retries:
                    raise
                last_error = error
                continue
            self._report(instance, call, started, "success", 0)
            return result
        if last_error is None:
            raise LookupError(f"no instance of {self._pool.service} left to try")
        raise last_error

    def _report(
        self, instance: Instance, call: _UnaryUnary, started: float, status: str, code: int | None
    ) -> None:
        fields = self._pool.report_fields(instance, call._method, started)
        self._consumer.update_service_call_result(ret_status=status, ret_code=code, **fields)

    def _prune(self) -> None:
        pool = self._pool
        snapshot = self._consumer.get_all_instances(namespace=pool.namespace, service=pool.service)
        for sub in pool.stale(snapshot.revision, {(i.host, i.port) for i in snapshot}):
            sub.close()

    # ------------------------------------------------------ grpc.Channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Picked(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Picked(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Picked(self, "stream_stream", method, request_serializer, response_deserializer)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError("a Polaris channel has no single connectivity state")

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError("a Polaris channel has no single connectivity state")

    def close(self) -> None:
        for sub in self._pool.take_all():
            sub.close()

    def __enter__(self) -> _Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def channel(
    service: str,
    *,
    consumer: Any,
    namespace: str = DEFAULT_NAMESPACE,
    credentials: grpc.ChannelCredentials | None = None,
    retries: int = 2,
    options: Any = None,
) -> grpc.Channel:
    """A ``grpc.Channel`` to ``service`` over a :class:`~polaris_sdk.ConsumerAPI`."""
    pool = _Pool(
        service, namespace, credentials, options, grpc.insecure_channel, grpc.secure_channel
    )
    return _Channel(pool, consumer, retries)


# ------------------------------------------------------------------ asyncio


class _AioUnaryUnary:
    def __init__(self, owner: _AioChannel, method: str, serializer: Any, deser: Any) -> None:
        self._owner = owner
        self._method = method
        self._serializer = serializer
        self._deserializer = deser

    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._owner.invoke(self, request, timeout, kwargs)

    def target(self, sub: Any) -> Any:
        return sub.unary_unary(self._method, self._serializer, self._deserializer)


class _AioPicked:
    def __init__(self, owner: Any, kind: str, method: str, serializer: Any, deser: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deser

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sub = self._owner.cached_sub_channel()
        callable_ = getattr(sub, self._kind)(self._method, self._serializer, self._deserializer)
        return callable_(*args, **kwargs)


class _AioChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` that picks an instance of a service per call."""

    def __init__(self, pool: _Pool, consumer: Any, retries: int) -> None:
        self._pool = pool
        self._consumer = consumer
        self._retries = retries

    async def pick_channel(self, tried: Attempts) -> tuple[Instance, Any]:
        pool = self._pool
        instance: Instance | None = None
        for _ in tried.picks():
            picked: Instance = await self._consumer.get_one_instance(
                namespace=pool.namespace, service=pool.service
            )
            if tried.fresh(picked):
                instance = picked
                break
        if instance is None:
            rest = await self._consumer.get_instances(
                namespace=pool.namespace, service=pool.service
            )
            instance = tried.other(rest)
            if instance is None:
                raise LookupError("no untried instance")
        snapshot = await self._consumer.get_all_instances(
            namespace=pool.namespace, service=pool.service
        )
        for sub in pool.stale(snapshot.revision, {(i.host, i.port) for i in snapshot}):
            await sub.close()
        return instance, pool.sub_channel(instance)

    def cached_sub_channel(self) -> Any:
        raise NotImplementedError("streaming calls on a Polaris aio channel are not supported")

    async def invoke(self, call: _AioUnaryUnary, request: Any, timeout: Any, kwargs: Any) -> Any:
        tried = Attempts()
        last_error: grpc.RpcError | None = None
        for attempt in range(1 + self._retries):
            try:
                instance, sub = await self.pick_channel(tried)
            except LookupError:
                break
            started = time.monotonic()
            try:
                result = await call.target(sub)(request, timeout=timeout, **kwargs)
            except grpc.RpcError as error:
                status, code = _outcome(error)
                await self._report(instance, call, started, status, code)
                tried.failed(instance)
                if status != "unreachable" or attempt == self._retries:
                    raise
                last_error = error
                continue
            await self._report(instance, call, started, "success", 0)
            return result
        if last_error is None:
            raise LookupError(f"no instance of {self._pool.service} left to try")
        raise last_error

    async def _report(
        self,
        instance: Instance,
        call: _AioUnaryUnary,
        started: float,
        status: str,
        code: int | None,
    ) -> None:
        fields = self._pool.report_fields(instance, call._method, started)
        await self._consumer.update_service_call_result(ret_status=status, ret_code=code, **fields)

    # -------------------------------------------------- grpc.aio.Channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioUnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioPicked(self, "unary_stream", method, *args[:2])

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioPicked(self, "stream_unary", method, *args[:2])

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AioPicked(self, "stream_stream", method, *args[:2])

    async def close(self, grace: float | None = None) -> None:
        for sub in self._pool.take_all():
            await sub.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("a Polaris channel has no single connectivity state")

    async def channel_ready(self) -> None:
        return None

    async def __aenter__(self) -> _AioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def aio_channel(
    service: str,
    *,
    consumer: Any,
    namespace: str = DEFAULT_NAMESPACE,
    credentials: grpc.ChannelCredentials | None = None,
    retries: int = 2,
    options: Any = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio.Channel`` to ``service`` over an :class:`~polaris_sdk.AsyncConsumerAPI`."""
    pool = _Pool(
        service,
        namespace,
        credentials,
        options,
        grpc.aio.insecure_channel,
        grpc.aio.secure_channel,
    )
    return _AioChannel(pool, consumer, retries)
