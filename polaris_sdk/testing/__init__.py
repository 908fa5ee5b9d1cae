"""Test support for services that use Polaris: a pytest plugin over the embedded server.

:mod:`polaris_sdk.testing.plugin` holds the fixtures (``polaris_server``,
``polaris_context`` ...); :class:`PolarisTestServer` is the handle they give,
also usable without pytest. Importing this package is cheap: the server
modules load when :class:`PolarisTestServer` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polaris_sdk.testing.server import PolarisTestServer

__all__ = ["PolarisTestServer"]


def __getattr__(name: str) -> Any:
    # The pytest plugin lives in this package and is loaded by every pytest
    # run: keep the server out of that import until a test asks for it.
    if name == "PolarisTestServer":
        from polaris_sdk.testing.server import PolarisTestServer

        return PolarisTestServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
