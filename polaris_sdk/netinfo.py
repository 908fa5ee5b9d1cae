"""Where this instance is reachable: host and port detection for registrations.

Contract:

* :func:`detect_host`: ``$POLARIS_INSTANCE_HOST`` if set; else the local
  address of the interface that routes to the first reachable Polaris
  server address (a UDP ``connect``, which sends nothing, then
  ``getsockname``, as polaris-go does); else ``127.0.0.1``.
* :func:`listening_port`: ``$POLARIS_INSTANCE_PORT`` if set; else the port
  of the one TCP socket this process listens on (what a prefork server
  such as gunicorn or uvicorn hands its workers); None when there is none
  or more than one port (then it must be given).
* No threads; the UDP probe has no network traffic and no waiting.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Final

__all__ = ["ENV_HOST", "ENV_PORT", "detect_host", "listening_port"]

ENV_HOST: Final = "POLARIS_INSTANCE_HOST"
ENV_PORT: Final = "POLARIS_INSTANCE_PORT"


def _split(address: str) -> tuple[str, int]:
    address = address.split("://", 1)[-1]
    host, _, port = address.rpartition(":")
    return host.strip("[]") or address, int(port) if port.isdigit() else 8091


def detect_host(addresses: Sequence[str]) -> str:
    """The address others reach this process at; see the module docstring."""
    explicit = os.environ.get(ENV_HOST, "").strip()
    if explicit:
        return explicit
    for address in addresses:
        host, port = _split(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        for family, kind, proto, _, target in infos:
            with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
                probe.connect(target)
                local = str(probe.getsockname()[0])
                if local and local not in ("0.0.0.0", "::"):
                    return local
    return "127.0.0.1"


def listening_port() -> int | None:
    """The port this process serves on, when it can tell; see the module docstring."""
    explicit = os.environ.get(ENV_PORT, "").strip()
    if explicit.isdigit():
        return int(explicit)
    ports: set[int] = set()
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            sock = socket.socket(fileno=fd)
            try:
                if (
                    sock.type == socket.SOCK_STREAM
                    and sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                ):
                    ports.add(int(sock.getsockname()[1]))
            finally:
                sock.detach()  # the fd stays the owner's
    return ports.pop() if len(ports) == 1 else None
