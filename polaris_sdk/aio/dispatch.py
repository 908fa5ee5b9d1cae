"""Delivery of events to user callbacks on the event loop: one mailbox per callback.

The asyncio twin of :mod:`polaris_sdk.dispatch`, with the same guarantees:

* Each callback gets its items in the order they were posted, one at a time.
  A plain function is called; an ``async def`` (anything returning an
  awaitable) is awaited before the next item.
* Posting never blocks and never runs user code on the poster's stack: it
  appends to the mailbox and, if the mailbox was idle, starts one task that
  drains it. An idle mailbox costs no task.
* A callback that raises is logged (``polaris_sdk.dispatch``, as in the
  threaded dispatcher) and gets
  the next item as usual; one slow ``async`` callback delays only its own
  mailbox. (A plain callback runs on the loop: like any code there, it must
  not block.)
* ``post`` may be called from any thread: items posted off the loop are
  handed to it with ``call_soon_threadsafe``.
* :meth:`AsyncMailbox.close` drops what is still queued; :meth:`wait_idle`
  waits, up to a deadline, for what was posted to be delivered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["AsyncMailbox"]

logger = logging.getLogger("polaris_sdk.dispatch")

T = TypeVar("T")


class AsyncMailbox(Generic[T]):
    """Items for one callback, delivered in order by a task started on demand."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[T], Any],
        label: str | None = None,
    ) -> None:
        self.callback = callback
        self._loop = loop
        self._label = label or getattr(callback, "__qualname__", None) or repr(callback)
        self._items: deque[T] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._loop_thread = threading.get_ident()

    def post(self, item: T) -> None:
        if self._closed:
            return
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.post, item)
            return
        self._items.append(item)
        self._idle.clear()
        if self._task is None:
            self._task = self._loop.create_task(
                self._drain(), name=f"polaris-mailbox {self._label}"
            )

    async def _drain(self) -> None:
        try:
            while self._items and not self._closed:
                item = self._items.popleft()
                try:
                    result = self.callback(item)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("callback %s raised; it keeps receiving events", self._label)
        finally:
            self._task = None
            if not self._items or self._closed:
                self._idle.set()
            else:  # cancelled with items left: a later post() restarts delivery
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the posted items to be delivered."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Deliver nothing more; an item being delivered completes unless cancelled."""
        self._closed = True
        self._items.clear()

    async def aclose(self, timeout: float = 2.0) -> None:
        """Close, and give a callback still running ``timeout`` seconds before cancelling it."""
        self.close()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.warning("listener %s still running after %.1fs; cancelled", self._label, timeout)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
