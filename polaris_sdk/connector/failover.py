"""Address failover: which configured server address to use now.

Contract:

* Addresses keep the configured order of preference. An address found
  unreachable is marked down for ``failback`` seconds; while it is down the
  next one is used, and after that it is preferred again. When every
  address is down they are all still offered, oldest failure first, so a
  call never fails without trying.
* "Unreachable" is the transport's judgement (:meth:`Endpoints.mark_down`),
  except silence: :meth:`Endpoints.no_answer` marks an address down only if
  it never answered since it was last marked down or created, since silence
  from a server that did answer may just be one slow call.
* Transport-neutral: each :class:`Endpoint` carries the transport's own
  handle for the address (a gRPC channel, a base URL). Thread-safe; does no
  I/O and starts no thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Endpoint", "Endpoints"]

logger = logging.getLogger("polaris_sdk.connector.failover")

T = TypeVar("T")


@dataclass(eq=False)
class Endpoint(Generic[T]):
    """One configured address, the transport's handle for it and its state."""

    address: str
    handle: T
    ready: bool = False
    """The address answered since it was created or last marked down."""
    down_until: float = 0.0
    down_since: float = 0.0
    down_reason: str = ""
    """Why it was last marked down (kept after it answers again)."""


class Endpoints(Generic[T]):
    """The configured addresses in order of preference; see the module doc."""

    def __init__(self, endpoints: Iterable[Endpoint[T]], failback: float) -> None:
        self._lock = threading.Lock()
        self._failback = failback
        self._all = list(endpoints)
        if not self._all:
            raise ValueError("at least one address is needed")

    def __iter__(self) -> Iterator[Endpoint[T]]:
        return iter(self._all)

    def candidates(self) -> list[Endpoint[T]]:
        """Every endpoint: those not marked down in order, then the others by failure age."""
        now = time.monotonic()
        with self._lock:
            up = [ep for ep in self._all if ep.down_until <= now]
            down = sorted(
                (ep for ep in self._all if ep.down_until > now), key=lambda e: e.down_since
            )
        return up + down

    def pick(self) -> Endpoint[T]:
        """The endpoint to use now: the first preferred one that is not marked down."""
        return self.candidates()[0]

    def prefers(self, ep: Endpoint[T], other: Endpoint[T]) -> bool:
        """Whether ``ep`` comes before ``other`` in the configured order."""
        return self._all.index(ep) < self._all.index(other)

    def is_down(self, ep: Endpoint[T]) -> bool:
        """Whether ``ep`` is marked down now."""
        until = ep.down_until
        return bool(until) and until > time.monotonic()  # no clock read while it is up

    def mark_down(self, ep: Endpoint[T], reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            already = ep.down_until > now
            ep.ready = False
            if not already:
                ep.down_reason = reason  # an outage keeps the reason it began with
            ep.down_since = now
            ep.down_until = now + self._failback
        if not already and len(self._all) > 1:
            logger.warning("server %s unreachable (%s); using the next address", ep.address, reason)

    def mark_up(self, ep: Endpoint[T]) -> None:
        """``ep`` answered: it is preferred again in its configured place."""
        if ep.ready and not ep.down_until:
            return
        with self._lock:
            ep.ready = True
            ep.down_until = 0.0

    def no_answer(self, ep: Endpoint[T]) -> None:
        """``ep`` did not answer in time: down if it never answered, else just suspect."""
        if not ep.ready:
            self.mark_down(ep, "no answer")
        ep.ready = False
