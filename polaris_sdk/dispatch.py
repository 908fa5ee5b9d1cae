"""Delivery of events to user callbacks: one mailbox per callback, a shared elastic pool.

Used wherever user code is called back: the consumer cache's watch
listeners and the provider's registration status listeners.

Guarantees:

* Each callback gets its items in the order they were posted, one at a time
  (never two calls of the same callback at once).
* Posting never blocks and never runs user code: it appends to the mailbox
  and, if the mailbox was idle, hands it to the pool.
* A callback that raises is logged (``polaris_sdk.dispatch``) and gets
  the next item as usual; the worker carries on.
* A slow callback ties up one worker, not the pool: when every worker is busy
  and work is waiting, the pool starts another thread, up to ``max_workers``.
  So up to ``max_workers - 1`` callbacks may block at once before the others
  wait. A busy mailbox yields its worker after ``BATCH`` items so a chatty
  callback cannot starve the rest.
* Threads are started on demand and leave after ``idle_timeout`` seconds
  without work, so callbacks that are rarely called cost no thread at all
  (a thousand watched services do not mean a thousand threads). Threads are
  named ``polaris-listener-N``.
* :meth:`Dispatcher.close` drops what is still queued, wakes every idle
  worker and joins them; a worker stuck inside a callback past the deadline
  is logged and left as a daemon thread (Python cannot stop it).
* :meth:`Mailbox.close` (unwatching) drops that mailbox's queued items; an
  item already being delivered completes. :meth:`Mailbox.wait_idle` waits,
  up to a deadline, for the items already posted to be delivered first.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["BATCH", "Dispatcher", "Mailbox"]

logger = logging.getLogger("polaris_sdk.dispatch")

T = TypeVar("T")
BATCH: Final = 32


class _Pool:
    """An elastic pool of worker threads running zero-argument tasks."""

    def __init__(self, name: str, max_workers: int, idle_timeout: float) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._name = name
        self._max = max_workers
        self._idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._tasks: deque[Callable[[], None]] = deque()
        self._workers: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self._ids = itertools.count(1)

    @property
    def thread_count(self) -> int:
        return len(self._workers)

    def submit(self, task: Callable[[], None]) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._tasks.append(task)
            # Idle workers counted here include ones notified but not yet
            # awake, so "more tasks than idle workers" is exactly when the
            # queue would otherwise wait behind a busy (maybe stuck) worker.
            if len(self._tasks) > self._idle and len(self._workers) < self._max:
                worker = threading.Thread(
                    target=self._run, name=f"{self._name}-{next(self._ids)}", daemon=True
                )
                self._workers.add(worker)
                worker.start()
            else:
                self._cond.notify()
            return True

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while True:
                while not self._tasks and not self._closed:
                    self._idle += 1
                    woken = self._cond.wait(self._idle_timeout)
                    self._idle -= 1
                    if not woken and not self._tasks:
                        self._workers.discard(me)
                        return
                if self._closed:
                    self._workers.discard(me)
                    return
                task = self._tasks.popleft()
                self._cond.release()
                try:
                    task()
                except BaseException:  # tasks catch their own errors; this is the last net
                    logger.exception("dispatch task failed")
                finally:
                    self._cond.acquire()

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._tasks.clear()
            self._cond.notify_all()
            workers = list(self._workers)
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for worker in workers:
            if worker is current:  # close() called from inside a callback
                continue
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                logger.warning("%s is still inside a callback after close; left running", worker)


class Mailbox(Generic[T]):
    """The queue in front of one callback. Create through :meth:`Dispatcher.mailbox`."""

    def __init__(self, pool: _Pool, callback: Callable[[T], None], label: str) -> None:
        self.callback = callback
        self._pool = pool
        self._label = label
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[T] = deque()
        self._scheduled = False
        self._closed = False
        self._runner: threading.Thread | None = None

    def post(self, item: T) -> None:
        with self._cond:
            if self._closed:
                return
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        if not self._pool.submit(self._drain):
            with self._cond:
                self._items.clear()
                self._idle()

    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every item posted so far was delivered; False if ``timeout`` ran out.

        From inside the callback it returns at once (it would wait for itself).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._runner is threading.current_thread():
                return not self._items
            while self._scheduled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _idle(self) -> None:
        # Called with the lock held.
        self._scheduled = False
        self._runner = None
        self._cond.notify_all()

    def _drain(self) -> None:
        for _ in range(BATCH):
            with self._cond:
                if not self._items or self._closed:
                    self._idle()
                    return
                item = self._items.popleft()
                self._runner = threading.current_thread()
            try:
                self.callback(item)
            except Exception:
                logger.exception("callback %s raised; it keeps receiving events", self._label)
        with self._cond:
            self._runner = None
            if not self._items or self._closed:
                self._idle()
                return
        # More is waiting: go to the back of the pool's queue so other
        # mailboxes get a turn. _scheduled stays true meanwhile.
        if not self._pool.submit(self._drain):
            with self._cond:
                self._idle()


class Dispatcher:
    """Owns the worker pool shared by every mailbox of one owner (a cache, a provider flow)."""

    def __init__(
        self, name: str = "polaris-listener", max_workers: int = 8, idle_timeout: float = 30.0
    ) -> None:
        self._pool = _Pool(name, max_workers, idle_timeout)

    @property
    def thread_count(self) -> int:
        return self._pool.thread_count

    def mailbox(self, callback: Callable[[T], None], label: str | None = None) -> Mailbox[T]:
        return Mailbox(self._pool, callback, label or _describe(callback))

    def close(self, timeout: float = 2.0) -> None:
        self._pool.close(timeout)


def _describe(callback: Callable[..., object]) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)
