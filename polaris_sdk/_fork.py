"""What a process forked from one using the SDK gets: the one place that handles ``fork()``.

Contract:

* Objects that hold threads, locks, sockets or registrations register here
  (:func:`track`); :func:`os.register_at_fork` runs, in the child only and
  right after the fork, ``_reset_after_fork()`` on each of them, oldest
  first. The parent is never touched.
* A reset runs on the child's only thread, before any other code of the
  child: it must not block, do I/O or start threads. It replaces the locks
  (another thread of the parent may have held one at the fork), forgets the
  threads, timers, registrations and cached snapshots of the parent, and
  arranges for channels, connection pools and caches to be built again on
  first use.
* Inherited gRPC channels, calls and HTTP connections are never closed or
  used in the child: grpcio supports neither (its ``doc/fork_support.md``:
  only objects made after the fork are safe, unless
  ``GRPC_ENABLE_FORK_SUPPORT`` and a ``poll``/``epoll1`` poll strategy are
  set), and an HTTP keep-alive socket is shared with the parent.
  :func:`keep` holds them for the child's lifetime so that no finalizer
  touches them either.
* :func:`forks` counts the forks this process came out of (0 in the
  original process), for objects that check lazily.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from typing import Any, Protocol

__all__ = ["ForkAware", "forks", "keep", "track"]

logger = logging.getLogger("polaris_sdk.fork")


class ForkAware(Protocol):
    def _reset_after_fork(self) -> None: ...


_order = itertools.count()
_tracked: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_kept: list[object] = []
_forks = 0
_lock = threading.Lock()


def track(obj: ForkAware) -> None:
    """Reset ``obj`` in every child forked from now on (held weakly)."""
    with _lock:
        _tracked[next(_order)] = obj


def keep(*objects: object) -> None:
    """Hold inherited objects for good: the child must neither use nor finalize them."""
    _kept.extend(o for o in objects if o is not None)


def forks() -> int:
    """How many forks separate this process from the one that imported the SDK."""
    return _forks


def _after_fork_in_child() -> None:
    global _forks, _lock
    _forks += 1
    _lock = threading.Lock()  # the parent may have held it at the fork
    objects = [obj for _, obj in sorted(_tracked.items())]
    for obj in objects:
        try:
            obj._reset_after_fork()
        except Exception:  # one broken reset must not leave the others undone
            logger.exception("resetting %r after fork failed", obj)


os.register_at_fork(after_in_child=_after_fork_in_child)
