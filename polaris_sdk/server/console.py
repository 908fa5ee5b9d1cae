"""The read-only web console of the embedded server: static assets shipped as package data.

The page (``console/index.html``, ``console.js``, ``console.css`` beside this
module) is plain HTML with a small script that polls the admin API
(``/naming/v1/namespaces``, ``/services``, ``/instances``) every few
seconds and redraws what changed; it pages through services and instances
100 at a time (the admin API's page size), so it stays quick however many
instances a service has. A token typed into the page is kept in the
browser's session storage and sent as ``X-Polaris-Token``.

This module only finds the assets: :func:`asset` maps a ``/console...`` path
to its bytes and media type (read once, then cached), or None.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["CONSOLE_PATH", "Asset", "asset", "is_console_path"]

CONSOLE_PATH: Final = "/console"
_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    body: bytes


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("polaris_sdk.server") / "console" / name).read_bytes()


def asset(path: str) -> Asset | None:
    """The asset at ``path`` (``/console`` and ``/console/`` are the page), or None."""
    if not is_console_path(path):
        return None
    name = path[len(CONSOLE_PATH) :].strip("/") or "index.html"
    if name not in _TYPES:
        return None
    return Asset(_TYPES[name], _read(name))
