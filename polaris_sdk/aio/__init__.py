"""The asyncio twins of the SDK's facades, over the same I/O-free cores.

``AsyncSDKContext``, ``AsyncProviderAPI`` and ``AsyncConsumerAPI`` take the
same arguments and raise the same errors as ``SDKContext``, ``ProviderAPI``
and ``ConsumerAPI``; their methods are awaited, and everything they run in
the background is a task on the context's event loop (no SDK threads).
Names load on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polaris_sdk.aio.consumer import AsyncConsumerAPI
    from polaris_sdk.aio.context import AsyncSDKContext
    from polaris_sdk.aio.provider import AsyncProviderAPI

__all__ = ["AsyncConsumerAPI", "AsyncProviderAPI", "AsyncSDKContext"]

_EXPORTS = {
    "AsyncConsumerAPI": "polaris_sdk.aio.consumer",
    "AsyncProviderAPI": "polaris_sdk.aio.provider",
    "AsyncSDKContext": "polaris_sdk.aio.context",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
