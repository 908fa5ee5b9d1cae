"""MockTransport: answer a context's naming calls with a function, in-process.

For tests of code that uses the SDK, in the manner of ``httpx.MockTransport``::

    def handler(method: str, request):       # request: the v1 wire message
        ...                                   # return the v1 answer message
    ctx = SDKContext.create(transport=MockTransport(handler))

``handler`` may also be an ``async def`` for an :class:`~polaris_sdk.aio.
AsyncSDKContext`. It may raise a :class:`~polaris_sdk.errors.PolarisError`
to stand for a transport failure (``NetworkError`` for an unreachable
server), which the connector retries and records exactly as a real failure.
The request and answer are the messages a real transport would send and
read, so the SDK's request building, answer judging, retries and caches
all run as they do against a server.
:func:`polaris_sdk.testing.in_memory_transport` gives one backed by the
embedded server's naming service, with no sockets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from polaris_sdk.connector.calls import Call
from polaris_sdk.errors import ClosedError

__all__ = ["Handler", "MockTransport"]

Handler = Callable[[str, Any], Any]
"""``handler(method, request)`` -> the answer message (or an awaitable of it)."""


class MockTransport:
    """A transport whose answers come from ``handler``; blocking and asyncio alike."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.closed = False

    def exchange(self, call: Call, timeout: float) -> Any:
        if self.closed:
            raise ClosedError("the transport is closed")
        answer = self._handler(call.method, call.request)
        if inspect.isawaitable(answer):
            raise TypeError("an async handler needs an AsyncSDKContext")
        return answer

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    async def aexchange(self, call: Call, timeout: float) -> Any:
        if self.closed:
            raise ClosedError("the transport is closed")
        answer = self._handler(call.method, call.request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    def for_asyncio(self) -> _AsyncView:
        """The same transport behind the asyncio seam (``await exchange(...)``)."""
        return _AsyncView(self)


class _AsyncView:
    def __init__(self, mock: MockTransport) -> None:
        self._mock = mock

    async def exchange(self, call: Call, timeout: float) -> Any:
        return await self._mock.aexchange(call, timeout)

    async def aclose(self) -> None:
        await self._mock.aclose()
