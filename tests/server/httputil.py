"""Talking to the embedded server's HTTP API in tests, and comparing answers across transports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from polaris_sdk import wire
from polaris_sdk.server.apiserver.http import encode_response

HTTP_TIMEOUT = 10.0
JSON_HEADERS = {"Content-Type": "application/json"}
# Values that differ between two servers given the same requests.
VOLATILE_KEYS = frozenset({"revision", "ctime", "mtime"})


def http_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A client of one server; loopback only, no proxy from the environment."""
    return httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT, trust_env=False, **kwargs)


def post(
    client: httpx.Client, method: str, body: Any, token: str | None = None, **headers: str
) -> httpx.Response:
    """POST ``body`` (JSON-encoded unless bytes) to ``/v1/<method>``."""
    all_headers = {**JSON_HEADERS, **headers}
    if token is not None:
        all_headers["X-Polaris-Token"] = token
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/v1/{method}", content=content, headers=all_headers)


def code_of(response: httpx.Response) -> int:
    """The Polaris code of an HTTP answer, checking status and headers agree with it."""
    code = int(response.json()["code"])
    assert response.status_code == code // 1000, (response.status_code, code)
    if code == wire.Code.ExecuteSuccess:
        assert "X-Polaris-Code" not in response.headers
    else:
        assert response.headers["X-Polaris-Code"] == str(code)
        assert response.headers["X-Polaris-Message"]
    return code


def grpc_answer_as_json(answer: Any) -> Any:
    """An official-stub answer as the HTTP API would write it."""
    name = answer.DESCRIPTOR.full_name
    ours = wire.message_class(name).FromString(answer.SerializeToString())
    return json.loads(encode_response(ours))


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def normalized(answer: Any) -> Any:
    """``answer`` (JSON) with volatile values blanked and instances in id order."""
    answer = json.loads(json.dumps(answer))
    for obj in _walk(answer):
        for key in VOLATILE_KEYS & obj.keys():
            if obj[key]:
                obj[key] = "<volatile>"
        for name in ("service", "aliasFor"):  # a service's id is made up by each server
            if isinstance(obj.get(name), dict) and obj[name].get("id"):
                obj[name]["id"] = "<volatile>"
        if isinstance(obj.get("instances"), list):
            obj["instances"].sort(key=lambda i: i.get("id") or "")
    return answer
