"""Closing a provider when the process leaves: at interpreter exit and on signals.

Contract:

* :meth:`ExitHandler.install` (main thread only) registers ``close`` with
  :mod:`atexit` and installs handlers for the given signals. Opt-in: signal
  handlers belong to the application.
* The handlers take no lock (a signal may land while the main thread holds
  any, one inside :mod:`threading` or :mod:`logging` included): a handler
  only writes the signal number to a pipe read by the ``polaris-exit``
  thread. That thread runs ``close()``, waits (at most ``close_bound()``
  seconds) for it to be done, even when another thread was already closing,
  then sends the signal again to the main thread, whose handler now passes
  it to the previous handler (with the default one the process ends as it
  would have).
* A call on the main thread that the close interrupted (a
  ``register_instance`` on the wire, deregistered again) calls
  :meth:`ExitHandler.hold_main_thread` before raising: it waits, bounded,
  for the signal to be passed on, so the process ends by the signal rather
  than by the main thread's exception.
* The facade calls :meth:`ExitHandler.closing` when its close starts and
  :meth:`ExitHandler.closed` when it is done: that restores the previous
  handlers (a signal that came during close() was held until then) and
  ends the exit thread. Without a signal, nothing is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Final

from polaris_sdk import _fork

__all__ = ["EXIT_THREAD", "ExitHandler", "require_main_thread"]

logger = logging.getLogger("polaris_sdk.provider.exit")

EXIT_THREAD: Final = "polaris-exit"
_STOP_BYTE: Final = b"\0"  # tells the exit thread to end; any other byte is a signal number

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def require_main_thread() -> None:
    """Signal handlers can only be installed from the main thread: say so clearly."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "deregister_on_exit() installs signal handlers: call it from the main thread"
        )


class ExitHandler:
    """Runs ``close`` at exit and on signals, then passes the signal on; see the module doc."""

    def __init__(self, close: Callable[[], None], close_bound: Callable[[], float]) -> None:
        self._close = close
        self._close_bound = close_bound
        self._done = threading.Event()  # set once close() has done its work
        self._handlers: dict[int, _Handler] = {}
        self._thread: threading.Thread | None = None
        self._fd: int | None = None  # write end of the pipe to the exit thread
        self._thread_done = False  # the exit thread has ended: handlers pass signals on
        self._signalled = threading.Event()  # the exit thread is handling a signal
        self._passed_on = threading.Event()  # ...and has sent it on to the main thread
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        """In a forked child the exit thread is the parent's: signals are passed straight on."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copy only: the parent's pipe stays open
        self._thread = None
        self._thread_done = True
        self._done = threading.Event()
        self._signalled = threading.Event()
        self._passed_on = threading.Event()

    def install(self, signals: Iterable[int]) -> None:
        """Close at interpreter exit and on ``signals``; call from the main thread."""
        require_main_thread()
        atexit.register(self._close)
        if self._thread is None:
            self._thread_done = False
            read_fd, self._fd = os.pipe()
            os.set_blocking(self._fd, False)  # the handler must never block on it
            self._thread = threading.Thread(
                target=self._loop, args=(read_fd,), name=EXIT_THREAD, daemon=True
            )
            self._thread.start()
        for sig in signals:
            if sig not in self._handlers:
                self._handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def closing(self) -> None:
        """The owner's close() has started: nothing more to do at exit."""
        atexit.unregister(self._close)

    def closed(self) -> None:
        """The owner's close() is done: restore the handlers, end the exit thread."""
        self._done.set()
        # A signal that came during close() was held until now; from here on
        # it goes to the previous handler.
        self._restore_signals()
        self._stop_thread()

    def hold_main_thread(self) -> None:
        """On the main thread, while a signal is being handled: wait until it is passed on.

        For a call that the signal's close() interrupted (a ``register_instance``
        on the wire): with the default handler the process then ends here, by
        the signal, instead of the main thread raising and exiting on its own
        first. Bounded; returns at once when no signal is being handled.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if self._signalled.is_set():
            self._passed_on.wait(self._close_bound() + 1.0)

    # ------------------------------------------------------------ internal

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes, perhaps while it holds
        # a lock close() needs, or one inside threading or logging: so no lock,
        # no thread start, no logging here, only a byte to the exit thread.
        fd = self._fd
        if fd is not None and not self._thread_done:
            try:
                os.write(fd, bytes([signum]))
                return
            except OSError:  # the exit thread has gone: pass the signal on now
                pass
        self._pass_signal_on(signum, frame)

    def _pass_signal_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._handlers.get(signum)
        if previous is None:
            previous = signal.getsignal(signum)
        self._restore_signals()
        if callable(previous) and previous != self._on_signal:
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, self._on_signal):
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _loop(self, read_fd: int) -> None:
        """The exit thread: wait for a signal number, close(), then send the signal again."""
        signum = 0
        try:
            data = os.read(read_fd, 1)  # one signal number, the stop byte, or end of file
            signum = data[0] if data else 0
            if signum == 0:
                self._thread_done = True
                # A handler that looked before the flag was set may have written since.
                os.set_blocking(read_fd, False)
                late = os.read(read_fd, 64)
                signum = next((b for b in late if b), 0)
        except BlockingIOError:
            pass
        except Exception:  # nothing can restart this thread usefully: log it, pass signals on
            logger.exception("the exit thread failed")
        finally:
            self._thread_done = True
            os.close(read_fd)
        if not signum:
            return
        self._signalled.set()
        logger.info("signal %d: closing the provider and deregistering", signum)
        bound = self._close_bound()
        try:
            self._close()
        except Exception:
            logger.exception("closing on signal %d failed", signum)
        # close() may have been running on another thread already: wait for it.
        if not self._done.wait(bound):
            logger.warning("signal %d: close() still running; passing the signal on", signum)
        # To the main thread itself: a process-wide signal may be taken by
        # another thread and leave the main one asleep. Its handler sees
        # _thread_done and passes the signal to the previous handler.
        signal.pthread_kill(threading.main_thread().ident or 0, signum)
        self._passed_on.set()

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        fd = self._fd
        if fd is not None:
            # OSError: already gone, or its pipe is full of signals it will handle.
            with contextlib.suppress(OSError):
                os.write(fd, _STOP_BYTE)
        thread.join(self._close_bound())
        if thread.is_alive():
            logger.warning("the exit thread did not end")

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # Restored before forgotten: a signal landing in between still finds
        # its previous handler.
        for sig, previous in list(self._handlers.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._handlers.clear()
        # No handler of ours can write to the pipe any more: the exit thread
        # reads end of file and ends.
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
