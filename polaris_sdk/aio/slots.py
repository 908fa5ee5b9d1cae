"""SlotRunner: the short periodic work of one AsyncSDKContext, in slots on one task.

The asyncio twin of :meth:`polaris_sdk.scheduler.Scheduler.call_in_slot`.

Contract:

* ``call_at(when, first)`` runs ``first()`` in the slot of ``when``: due
  times are rounded down to the :data:`~polaris_sdk.scheduler.SLOT` grid
  (20 ms) on the loop's clock, so an entry runs up to one slot early, never
  late by more than the loop is. ``first`` is a plain function: it starts its
  work (sends a request) and returns either ``None`` or a *continuation*, an
  awaitable that finishes it (waits for the answer and judges it).
* In each slot every due entry's first part runs, in the order scheduled;
  then the slot's continuations are awaited one after another, in that
  order. So all the requests of a slot are on the wire before any answer is
  awaited: revision checks are pipelined on the Discover stream, heartbeats
  are concurrent unaries. The continuations of a slot are awaited by a task
  of that slot, so a slot whose answers are slow does not hold back the
  next one.
* Supervised: an exception in a first part or a continuation is logged
  (``polaris_sdk.aio.slots``) and contained. The runner itself is one task
  started with :meth:`AsyncSDKContext.spawn` on first use (restarted with
  backoff should it fail) and stopped by the context's ``aclose()``, which
  also cancels the continuations still awaited; continuations not yet
  started are closed, not run.
* ``cancel()`` on a handle stops an entry whose first part has not run;
  it never interrupts a continuation. Scheduling on a closed context raises
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from polaris_sdk.errors import ClosedError
from polaris_sdk.scheduler import SLOT

if TYPE_CHECKING:
    from polaris_sdk.aio.context import AsyncSDKContext

__all__ = ["SLOT", "Continuation", "FirstPart", "SlotHandle", "SlotRunner"]

logger = logging.getLogger("polaris_sdk.aio.slots")

Continuation = Awaitable[Any]
"""What a first part may return: awaited once the slot's first parts have all run."""
FirstPart = Callable[[], Awaitable[Any] | None]
"""An entry: starts its work and returns its continuation, or None when there is no more."""

RUNNER_TASK: Final = "polaris-slots"
SLOT_TASK: Final = "polaris-slot"
_EARLY: Final = 0.001
"""A slot runs once the loop's clock is this close to it (the loop's timers may wake early)."""


def slot_of(when: float) -> int:
    """The index of the slot ``when`` falls in (a time already on the grid stays in its own)."""
    return math.floor(when / SLOT + 1e-9)


class SlotHandle:
    """One scheduled entry; ``when`` is the time asked for, ``slot`` its slot index."""

    __slots__ = ("_done", "_first", "slot", "when")

    def __init__(self, when: float, first: FirstPart) -> None:
        self.when = when
        self.slot = slot_of(when)
        self._first = first
        self._done = False

    @property
    def cancelled(self) -> bool:
        """Whether the entry can no longer run: cancelled, or run already."""
        return self._done

    def cancel(self) -> bool:
        """Stop the entry if its first part has not run; True if this call stopped it."""
        if self._done:
            return False
        self._done = True
        return True

    def __repr__(self) -> str:
        state = " done" if self._done else ""
        name = getattr(self._first, "__qualname__", None) or repr(self._first)
        return f"<SlotHandle {name} at {self.when:.3f}{state}>"


class SlotRunner:
    """Entries on a 20 ms grid, run slot by slot on one task; see the module docstring."""

    def __init__(self, ctx: AsyncSDKContext) -> None:
        self._ctx = ctx
        self._slots: dict[int, list[SlotHandle]] = {}
        self._heap: list[int] = []  # slot indices with entries, each once
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._waking_at: int | None = None  # the slot the runner sleeps until
        self._drains: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Entries waiting for their slot (cancelled ones excluded)."""
        return sum(not h._done for entries in self._slots.values() for h in entries)

    @property
    def running(self) -> bool:
        """Whether the runner's task is alive."""
        return self._task is not None and not self._task.done()

    def call_at(self, when: float, first: FirstPart) -> SlotHandle:
        """Run ``first()`` in the slot of ``when`` (on the loop's clock)."""
        if self._ctx.closed:
            raise ClosedError("the AsyncSDKContext is closed")
        handle = SlotHandle(when, first)
        slot = handle.slot
        entries = self._slots.get(slot)
        if entries is None:
            self._slots[slot] = [handle]
            heapq.heappush(self._heap, slot)
            if self._waking_at is None or slot < self._waking_at:
                self._poke()
        else:
            entries.append(handle)
        if self._task is None or self._task.done():
            self._task = self._ctx.spawn(RUNNER_TASK, self._run)
        return handle

    def call_later(self, delay: float, first: FirstPart) -> SlotHandle:
        """:meth:`call_at` ``delay`` seconds from now."""
        return self.call_at(self._ctx.time() + max(0.0, delay), first)

    # ------------------------------------------------------------ internal

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                heap = self._heap
                if not heap:
                    await self._sleep(loop, None)
                    continue
                slot = heap[0]
                if slot * SLOT > loop.time() + _EARLY:
                    await self._sleep(loop, slot)
                    continue
                heapq.heappop(heap)
                self._run_slot(loop, self._slots.pop(slot, []))
                if heap and heap[0] * SLOT <= loop.time():
                    await asyncio.sleep(0)  # a backlog of due slots: let the loop breathe
        except asyncio.CancelledError:
            await self._stop_drains()
            raise

    async def _sleep(self, loop: asyncio.AbstractEventLoop, slot: int | None) -> None:
        wake: asyncio.Future[None] = loop.create_future()
        self._wake, self._waking_at = wake, slot
        timer = loop.call_at(slot * SLOT, _set_done, wake) if slot is not None else None
        try:
            await wake
        finally:
            self._wake = self._waking_at = None
            if timer is not None:
                timer.cancel()

    def _run_slot(self, loop: asyncio.AbstractEventLoop, entries: list[SlotHandle]) -> None:
        later: list[Continuation] = []
        for handle in entries:
            if handle._done:
                continue
            handle._done = True  # an entry runs once; cancel() after this is a no-op
            try:
                continuation = handle._first()
            except Exception:
                logger.exception("slot entry %r failed", handle)
                continue
            if continuation is not None:
                later.append(continuation)
        if later:
            task = loop.create_task(self._drain(later), name=SLOT_TASK)
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _drain(self, continuations: list[Continuation]) -> None:
        index = 0
        try:
            for index, continuation in enumerate(continuations):  # noqa: B007 (read in finally)
                try:
                    await continuation
                except Exception:
                    logger.exception("slot continuation %r failed", continuation)
        finally:
            for left in continuations[index + 1 :]:
                close = getattr(left, "close", None)
                if close is not None:
                    close()  # a coroutine never started: closed, not run

    async def _stop_drains(self) -> None:
        drains = list(self._drains)
        for task in drains:
            task.cancel()
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
