"""The one scheduler of an SDKContext: every timed piece of work runs here.

Contract:

* One timer thread (``polaris-timer``) keeps a heap of due times and hands
  each due task to a small bounded pool of worker threads
  (``polaris-worker_N``), so a slow network call delays neither the timer nor
  tasks on the other workers. Thousands of pending timers cost one heap entry
  each, not a thread.
* Tasks run at or after their due time, in due-time order when they are due
  together; tasks due at the same time may run concurrently on different
  workers. A repeating task re-arms itself with ``call_at``. Short periodic
  work (revision checks, heartbeats) uses ``call_in_slot``: due times on a
  grid of 20 to 100 ms, a twentieth of the task's period (:func:`slot_for`;
  up to one slot early), and the tasks of a slot run in turn on
  one worker in the order scheduled, so a thousand timers do not mean a
  thousand thread hand-offs. A slotted task may return a continuation (a
  callable): the worker runs every task of its batch first, then their
  continuations in the same order. A task that sends a request and returns
  the wait for its answer as its continuation thus puts all of a slot's
  requests on the wire before waiting for any (pipelined).
* Supervised: an exception in a task is logged (``polaris_sdk.scheduler``)
  and contained. An exception in the timer loop itself is logged and the loop
  restarts with backoff; if the timer thread ends anyway it is started again
  by the next scheduling call.
* ``cancel()`` on a handle stops a task that has not started; it never
  interrupts a running one. ``close(timeout)`` cancels every timer not yet
  due and lets the work already handed to the workers finish (each network
  call has its own deadline), waiting at most ``timeout`` for it: a task
  still running then is logged by name and left to end on its own (Python
  cannot stop a thread), so close never hangs on a stuck task. Otherwise no
  thread is left behind. Scheduling on a closed scheduler raises
  :class:`~polaris_sdk.errors.ClosedError`.
* Time is read through ``clock`` (default ``time.monotonic``): due times,
  ``call_later`` and the timer's waits are on that clock, so a test can run
  timers on a fake one. A clock that jumps (a test's fake clock) calls
  :meth:`Scheduler.wake` after each jump so the timer reads it again; a real
  clock needs nothing. ``close(timeout)`` waits in real time whatever the clock.
* All methods are thread-safe, including from inside a task.
* In a process forked from the owner's, the scheduler starts empty: the
  parent's timers are dropped (they belong to the parent's registrations
  and caches) and threads are started again on first use.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

from polaris_sdk import _fork
from polaris_sdk.errors import ClosedError

__all__ = ["Continuation", "Scheduler", "TimerHandle", "slot_for"]

logger = logging.getLogger("polaris_sdk.scheduler")

TIMER_THREAD: Final = "polaris-timer"
WORKER_PREFIX: Final = "polaris-worker"
_MAX_BACKOFF: Final = 5.0
SLOT: Final = 0.02
"""Seconds per slot of :meth:`Scheduler.call_in_slot`: the narrowest grid."""
WIDE_SLOT: Final = 0.1
"""The widest grid :func:`slot_for` gives (a task with a period of 2 s or more)."""
SLOT_BATCH: Final = 32
"""Most slotted tasks handed to one worker at once."""

Continuation = Callable[[], object]
"""What a slotted task may return: the rest of its work, run once its batch has started."""


def slot_for(period: float, delay: float = math.inf) -> float:
    """The slot width for a task repeating every ``period`` seconds, due in
    ``delay``: a twentieth of the period (of twice the delay when that is
    shorter: a quick retry is not moved early by much), a multiple of
    :data:`SLOT` up to :data:`WIDE_SLOT`. Wider slots gather more tasks per
    wake-up and hand-off (and per pipelined burst of requests)."""
    span = min(period, 2 * delay)
    return min(WIDE_SLOT, max(1, int(span / 20 / SLOT + 1e-9)) * SLOT)


class TimerHandle:
    """A scheduled call. ``when`` is its due time on the scheduler's clock."""

    __slots__ = ("_args", "_batched", "_cancelled", "_fn", "_in_heap", "_scheduler", "when")

    def __init__(
        self, scheduler: Scheduler, when: float, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self._scheduler = scheduler
        self.when = when
        self._fn = fn
        self._args = args
        self._cancelled = False
        self._in_heap = False
        self._batched = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> bool:
        """Stop the call if it has not started; True if this call cancelled it."""
        return self._scheduler._cancel(self)

    def _run(self) -> Continuation | None:
        """Run the call; its continuation if it is slotted and returned one."""
        if self._cancelled:
            return None
        self._cancelled = True  # a handle runs once; cancel() after this is a no-op
        try:
            then = self._fn(*self._args)
        except Exception:
            logger.exception("scheduled task %s failed", _describe(self._fn))
            return None
        return then if self._batched and callable(then) else None

    def _continue(self, then: Continuation) -> None:
        try:
            then()
        except Exception:
            logger.exception("scheduled task %s failed", _describe(self._fn))

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<TimerHandle {_describe(self._fn)} at {self.when:.3f}{state}>"


def _describe(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class Scheduler:
    """Timers on one thread, work on a bounded pool; see the module docstring."""

    def __init__(self, workers: int = 8, *, clock: Callable[[], float] = time.monotonic) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cancelled_in_heap = 0
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=WORKER_PREFIX)
        self._timer: threading.Thread | None = None
        self._restarts = 0
        self._running: dict[threading.Thread, Callable[..., Any]] = {}  # worker -> task, for close

        self._workers = workers
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: no timer of the parent's, new locks, threads on first use."""
        for _, _, handle in self._heap:
            handle._cancelled = True
            handle._in_heap = False
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._cancelled_in_heap = 0
        _fork.keep(self._executor)
        self._executor = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix=WORKER_PREFIX
        )
        self._timer = None
        self._running = {}

    # ------------------------------------------------------------ public

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def clock(self) -> Callable[[], float]:
        """The clock due times are read on (seconds, never going back)."""
        return self._clock

    @property
    def pending(self) -> int:
        """Timers waiting to become due (cancelled ones excluded)."""
        with self._cond:
            return len(self._heap) - self._cancelled_in_heap

    @property
    def restarts(self) -> int:
        """How many times the timer loop was restarted after a failure."""
        return self._restarts

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on a worker at ``when`` (on :attr:`clock`)."""
        return self._push(TimerHandle(self, when, fn, args))

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on a worker after ``delay`` seconds."""
        return self.call_at(self._clock() + max(0.0, delay), fn, *args)

    def call_in_slot(
        self, when: float, fn: Callable[..., Any], *args: Any, slot: float = SLOT
    ) -> TimerHandle:
        """Like :meth:`call_at`, for short periodic work that may run up to ``slot``
        seconds early: ``when`` is rounded down to a grid of that width (a multiple
        of :data:`SLOT`; see :func:`slot_for`), and the tasks due together run one
        after another on one worker (at most :data:`SLOT_BATCH` per worker), so many
        timers cost one wake-up and one hand-off per slot, not one each.
        ``fn`` may return a :data:`Continuation`, run after the rest of its batch."""
        # The small epsilon keeps a time already on the grid (in decimal) where it is.
        handle = TimerHandle(self, math.floor(when / slot + 1e-9) * slot, fn, args)
        handle._batched = True
        return self._push(handle)

    def call_later_in_slot(
        self, delay: float, fn: Callable[..., Any], *args: Any, slot: float = SLOT
    ) -> TimerHandle:
        """:meth:`call_in_slot` ``delay`` seconds from now."""
        return self.call_in_slot(self._clock() + max(0.0, delay), fn, *args, slot=slot)

    def _push(self, handle: TimerHandle) -> TimerHandle:
        with self._cond:
            if self._closed:
                raise ClosedError("the scheduler is closed")
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            handle._in_heap = True
            if self._heap[0][2] is handle:
                self._cond.notify()
            self._ensure_timer()
        return handle

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a worker now; its exception is kept in the future."""
        with self._cond:
            if self._closed:
                raise ClosedError("the scheduler is closed")
            try:
                return self._executor.submit(self._in_worker, fn, *args)
            except RuntimeError as exc:  # the interpreter is shutting down
                raise ClosedError(f"the scheduler cannot run more work: {exc}") from None

    def wake(self) -> None:
        """Make the timer read the clock again now: called by a clock that has jumped."""
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel pending timers, finish handed-out work and stop every thread. Idempotent.

        Waits at most ``timeout`` seconds; tasks still running then are logged
        and left to finish on their own.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            for _, _, handle in self._heap:
                handle._cancelled = True
                handle._in_heap = False
            self._heap.clear()
            self._cancelled_in_heap = 0
            self._cond.notify_all()
            timer = self._timer
        current = threading.current_thread()
        if timer is not None and timer is not current:
            timer.join(max(0.0, deadline - time.monotonic()))
        # Work already handed to the workers (a deregistration) still runs;
        # each has its own deadline, and this wait has one too. A task that
        # closes its own context must not join its own thread.
        self._executor.shutdown(wait=False)
        workers = [t for t in list(self._executor._threads) if t is not current]
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        running = self._running
        stuck = sorted(
            _describe(running[t]) if t in running else "?" for t in workers if t.is_alive()
        )
        if stuck:
            logger.warning(
                "scheduler closed with %d task(s) still running after %.1fs, left to finish: %s",
                len(stuck),
                timeout,
                ", ".join(stuck),
            )

    # ----------------------------------------------------------- internal

    def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        me = threading.current_thread()
        self._running[me] = fn
        try:
            return fn(*args)
        finally:
            del self._running[me]

    def _run_handle(self, handle: TimerHandle) -> None:
        self._run_batch([handle])

    def _run_batch(self, handles: list[TimerHandle]) -> None:
        me = threading.current_thread()
        running = self._running
        later: list[tuple[TimerHandle, Continuation]] = []
        try:
            for handle in handles:
                running[me] = handle._fn
                then = handle._run()
                if then is not None:
                    later.append((handle, then))
            # Newest first: a server answers in order, so once the last request
            # sent has its answer the others have theirs, and the worker waits once.
            for handle, then in reversed(later):
                running[me] = handle._fn
                handle._continue(then)
        finally:
            running.pop(me, None)

    def _cancel(self, handle: TimerHandle) -> bool:
        with self._cond:
            if handle._cancelled:
                return False
            handle._cancelled = True
            if not handle._in_heap:
                return True
            self._cancelled_in_heap += 1
            # Lazy deletion: rebuild when most entries are dead, so a steady
            # stream of cancels cannot grow the heap without bound.
            if self._cancelled_in_heap > 64 and self._cancelled_in_heap * 2 > len(self._heap):
                for _, _, dead in self._heap:
                    dead._in_heap = not dead._cancelled
                self._heap = [e for e in self._heap if not e[2]._cancelled]
                heapq.heapify(self._heap)
                self._cancelled_in_heap = 0
            return True

    def _ensure_timer(self) -> None:
        # Called with the lock held.
        if self._timer is not None and self._timer.is_alive():
            return
        if self._timer is not None:
            logger.warning("scheduler timer thread had stopped; starting it again")
        self._timer = threading.Thread(target=self._supervise, name=TIMER_THREAD, daemon=True)
        self._timer.start()

    def _supervise(self) -> None:
        backoff = 0.05
        while True:
            try:
                self._timer_loop()
                return
            except Exception:
                self._restarts += 1
                logger.exception("scheduler timer loop failed; restarting in %.2fs", backoff)
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(backoff)
                if self._closed:
                    return
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _timer_loop(self) -> None:
        while True:
            due = self._next_due()
            if due is None:
                return
            batch: list[TimerHandle] = []
            for handle in due:
                if not handle._batched:
                    self._dispatch(handle)
                    continue
                batch.append(handle)
                if len(batch) == SLOT_BATCH:
                    self._dispatch_batch(batch)
                    batch = []
            if batch:
                self._dispatch_batch(batch)

    def _next_due(self) -> list[TimerHandle] | None:
        """Block until some timers are due; None once closed."""
        with self._cond:
            while not self._closed:
                heap = self._heap
                while heap and heap[0][2]._cancelled:
                    heapq.heappop(heap)[2]._in_heap = False
                    self._cancelled_in_heap -= 1
                if not heap:
                    self._cond.wait()
                    continue
                now = self._clock()
                if heap[0][0] > now:
                    self._cond.wait(heap[0][0] - now)
                    continue
                due: list[TimerHandle] = []
                while heap and heap[0][0] <= now:
                    handle = heapq.heappop(heap)[2]
                    handle._in_heap = False
                    if handle._cancelled:
                        self._cancelled_in_heap -= 1
                    else:
                        due.append(handle)
                return due
            return None

    def _dispatch(self, handle: TimerHandle) -> None:
        self._submit(self._run_handle, handle)

    def _dispatch_batch(self, handles: list[TimerHandle]) -> None:
        self._submit(self._run_batch, handles)

    def _submit(self, run: Callable[[Any], None], work: Any) -> None:
        try:
            self._executor.submit(run, work)
        except RuntimeError:
            # The executor refuses work only once close() or the interpreter's
            # exit has shut it down; the task is dropped like a pending timer.
            logger.debug("scheduler shut down; dropping %r", work)
