"""A requests transport adapter that resolves service names through a consumer.

    session = requests.Session()
    session.mount("http://", PolarisAdapter(consumer))
    session.get("http://greeter/hello")

The same rules as :mod:`polaris_sdk.integrations.httpx`: which hosts name
services (:func:`~polaris_sdk.integrations._calls.service_of`; others are
sent as they are), one pick and one report per attempt, requests whose
connection could not be made retried on another instance (``retries``,
default 2), and those of idempotent methods whose connection broke before any
answer, timeouts and 5xx of idempotent methods only with
``retry_idempotent=True``, never the same instance twice for one request.
Needs the ``requests`` extra.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import requests
import requests.adapters

from polaris_sdk.integrations._calls import Attempts, may_retry, result_fields, service_of
from polaris_sdk.model import DEFAULT_NAMESPACE, Instance

__all__ = ["PolarisAdapter"]


def _outcome(exc: requests.RequestException) -> tuple[str, bool]:
    """(ret_status, whether the connection broke before any answer)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _refused(exc):
        return "unreachable", False
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout", False
    return "fail", isinstance(exc, requests.exceptions.ConnectionError)


def _refused(exc: BaseException) -> bool:
    text = repr(exc)
    return "NewConnectionError" in text or "Failed to establish a new connection" in text


class PolarisAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter over a :class:`~polaris_sdk.ConsumerAPI`."""

    def __init__(
        self,
        consumer: Any,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        retries: int = 2,
        retry_idempotent: bool = False,
        **kwargs: Any,
    ) -> None:
        if type(retries) is not int or retries < 0:
            raise ValueError("retries must be an int >= 0")
        super().__init__(**kwargs)
        self._consumer = consumer
        self._namespace = namespace or DEFAULT_NAMESPACE
        self._retries = retries
        self._retry_idempotent = retry_idempotent

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        url = urllib.parse.urlsplit(request.url or "")
        target = service_of(url.hostname or "", self._namespace)
        if target is None:
            return super().send(request, *args, **kwargs)
        namespace, service = target
        replayable = request.body is None or isinstance(request.body, bytes | str)
        attempts = 1 + self._retries if replayable else 1
        safe = may_retry(request.method or "", True)
        idempotent = safe and self._retry_idempotent
        tried = Attempts()
        answer: Any = None
        for attempt in range(attempts):
            instance = self._pick(namespace, service, tried)
            if instance is None:
                break
            last = attempt == attempts - 1
            routed = request.copy()
            netloc = f"{instance.host}:{instance.port}"
            routed.url = urllib.parse.urlunsplit(url._replace(netloc=netloc))
            routed.headers["Host"] = url.netloc
            started = time.monotonic()
            try:
                response = super().send(routed, *args, **kwargs)
            except requests.RequestException as exc:
                status, broken = _outcome(exc)
                self._report(namespace, service, instance, url.path, started, status, None)
                tried.failed(instance)
                if last or not (status == "unreachable" or idempotent or (broken and safe)):
                    raise
                continue
            code = response.status_code
            self._report(namespace, service, instance, url.path, started, "success", code)
            if code >= 500 and idempotent and not last:
                tried.failed(instance)
                answer = response
                continue
            return response
        if answer is not None:
            return answer
        raise requests.exceptions.ConnectionError(f"no instance of {service} left to try")

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
        path: str,
        started: float,
        status: str,
        code: int | None,
    ) -> None:
        fields = result_fields(namespace, service, instance, path, time.monotonic() - started)
        self._consumer.update_service_call_result(ret_status=status, ret_code=code, **fields)
