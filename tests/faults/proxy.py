"""FaultProxy: a loopback TCP proxy that injects network faults between the SDK and a server.

Contract:

* One thread, ``polaris-test-proxy``, runs a selector loop over the listening
  socket and every proxied connection. Control calls (:meth:`FaultProxy.delay`,
  :meth:`~FaultProxy.blackhole`, :meth:`~FaultProxy.heal`,
  :meth:`~FaultProxy.cut`, :meth:`~FaultProxy.reset`) may come from any
  thread; they are applied by the loop, in order, and return once applied, so
  when ``reset()`` returns every connection that existed has been reset.
* Faults:

  - ``delay(down=s, up=s)``: every chunk read from that side is held ``s``
    seconds before it is passed on, order kept (``down``: answers from the
    server; ``up``: requests from the client).
  - ``blackhole()``: no byte moves in either direction and nothing is read;
    connections opened meanwhile are accepted and never answered (not even
    connected upstream). What was sent waits in the socket buffers, as it
    would in a partitioned network's retransmissions.
  - ``heal()``: no fault any more; held bytes and held connections go on.
  - ``cut()``: every connection is closed with a FIN on both sides.
  - ``reset()``: every connection is aborted with an RST on both sides
    (``SO_LINGER`` 0). ``reset_every(period)`` does it every ``period``
    seconds, timed by the loop, until ``heal()``.

* A side that closes is passed on: its bytes are flushed to the other side,
  which is then closed too. A side that resets resets the other at once, and
  a refused upstream connect resets the client's connection.
* Bounded: at most ``max_connections`` connections (more are reset at once)
  and at most ``max_buffered`` bytes held per direction of a connection
  (reading from that side pauses until the other side takes them).
* Counters (:meth:`FaultProxy.stats`): connections accepted and open, bytes
  each way, and requests sent by clients: gRPC messages (HTTP/2 DATA frames
  cut into length-prefixed messages) and new HTTP/2 streams, or HTTP/1.1
  requests. Requests are counted when the proxy reads them, so a black-holed
  request is not counted until the network heals.
* ``close()`` closes every socket and joins the thread. An unexpected
  exception in the loop is kept in :attr:`FaultProxy.errors` (tests assert it
  is empty) and the loop goes on; errors of one connection close only it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final

__all__ = ["FaultProxy", "ProxyStats", "RequestCounter"]

logger = logging.getLogger("tests.faults.proxy")

THREAD_NAME: Final = "polaris-test-proxy"
_CHUNK: Final = 65536
_CONNECT_TIMEOUT: Final = 1.0
_CONTROL_TIMEOUT: Final = 10.0
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_HEAD: Final = 65536
_LINGER_RST: Final = struct.pack("ii", 1, 0)


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    connections: int = 0
    """Connections accepted since the start."""
    active: int = 0
    """Connections open now."""
    bytes_up: int = 0
    """Bytes read from clients."""
    bytes_down: int = 0
    """Bytes read from the server."""
    requests: int = 0
    """gRPC messages or HTTP/1.1 requests read from clients."""
    streams: int = 0
    """HTTP/2 streams (one per gRPC call) or HTTP/1.1 requests opened by clients."""
    resets: int = 0
    """Connections aborted with an RST by :meth:`FaultProxy.reset` or ``reset_every``."""
    reset_rounds: int = 0
    """Times every connection was reset (connections or not)."""


# ------------------------------------------------------------ request counting


class _Http2Requests:
    """Counts new streams and gRPC messages in a client's HTTP/2 byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._preface = True
        self._max_stream = 0
        # stream id -> [prefix bytes of the next message, bytes left of the current one]
        self._messages: dict[int, tuple[bytearray, list[int]]] = {}

    def feed(self, data: bytes) -> tuple[int, int]:
        self._buffer += data
        if self._preface:
            if len(self._buffer) < len(_H2_PREFACE):
                return 0, 0
            del self._buffer[: len(_H2_PREFACE)]
            self._preface = False
        streams = messages = 0
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[0:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self._buffer[9 : 9 + length])
            del self._buffer[: 9 + length]
            if kind == 0:  # DATA
                if flags & 0x8 and payload:  # PADDED
                    payload = payload[1 : len(payload) - payload[0]]
                messages += self._data(stream, payload)
            elif kind == 1 and stream > self._max_stream:  # HEADERS opening a stream
                self._max_stream = stream
                streams += 1
            if (kind in (0, 1) and flags & 0x1) or kind == 3:  # END_STREAM, RST_STREAM
                self._messages.pop(stream, None)
        return streams, messages

    def _data(self, stream: int, payload: bytes) -> int:
        prefix, left = self._messages.setdefault(stream, (bytearray(), [0]))
        count = 0
        i = 0
        while i < len(payload):
            if left[0]:
                take = min(left[0], len(payload) - i)
                left[0] -= take
                i += take
                continue
            need = 5 - len(prefix)
            prefix += payload[i : i + need]
            i += min(need, len(payload) - i)
            if len(prefix) == 5:
                count += 1
                left[0] = int.from_bytes(prefix[1:5], "big")
                prefix.clear()
        return count


class _Http1Requests:
    """Counts requests in a client's HTTP/1.1 byte stream (Content-Length or chunked bodies)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "head"
        self._left = 0
        self.broken = False

    def feed(self, data: bytes) -> int:
        if self.broken:
            return 0
        self._buffer += data
        count = 0
        while True:
            if self._state in ("body", "chunk"):
                take = min(self._left, len(self._buffer))
                del self._buffer[:take]
                self._left -= take
                if self._left:
                    return count
                self._state = "head" if self._state == "body" else "size"
                continue
            end = self._buffer.find(b"\r\n\r\n" if self._state == "head" else b"\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self.broken = True
                return count
            line = bytes(self._buffer[:end])
            if self._state == "head":
                del self._buffer[: end + 4]
                count += 1
                self._start_body(line)
            elif self._state == "size":
                del self._buffer[: end + 2]
                size = int(line.split(b";")[0].strip() or b"0", 16)
                self._state, self._left = ("chunk", size + 2) if size else ("trailer", 0)
            else:  # trailer lines until an empty one
                del self._buffer[: end + 2]
                if not line:
                    self._state = "head"

    def _start_body(self, head: bytes) -> None:
        headers = {}
        for raw in head.split(b"\r\n")[1:]:
            name, _, value = raw.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self._state = "size"
        else:
            self._left = int(headers.get(b"content-length", b"0") or 0)
            self._state = "body" if self._left else "head"


class RequestCounter:
    """Requests and streams in one client's byte stream; HTTP/2 or HTTP/1.1, sniffed."""

    def __init__(self) -> None:
        self._sniffed = bytearray()
        self._h2: _Http2Requests | None = None
        self._h1: _Http1Requests | None = None

    def feed(self, data: bytes) -> tuple[int, int]:
        """(new streams, new requests) in ``data``."""
        if self._h2 is None and self._h1 is None:
            self._sniffed += data
            if len(self._sniffed) < 3:
                return 0, 0
            data, self._sniffed = bytes(self._sniffed), bytearray()
            if data.startswith(_H2_PREFACE[:3]):
                self._h2 = _Http2Requests()
            else:
                self._h1 = _Http1Requests()
        if self._h2 is not None:
            return self._h2.feed(data)
        assert self._h1 is not None
        requests = self._h1.feed(data)
        return requests, requests


# ----------------------------------------------------------------- the proxy


class _Side:
    """One socket of a connection and the bytes waiting to be written to it."""

    __slots__ = ("eof", "events", "held", "outbox", "sock", "want_write")

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.outbox: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held = 0  # bytes in outbox
        self.eof = False  # the peer of this socket closed its sending side
        self.events = 0  # selector interest currently registered
        self.want_write = False  # the socket was full; write when it has room


class _Connection:
    __slots__ = ("client", "counter", "upstream")

    def __init__(self, client: socket.socket) -> None:
        self.client = _Side(client)
        self.upstream = _Side(None)
        self.counter = RequestCounter()

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; see the module docstring."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        max_connections: int = 256,
        max_buffered: int = 4 * 1024 * 1024,
    ) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._connections: list[_Connection] = []
        self._delay_up = 0.0
        self._delay_down = 0.0
        self._blackholed = False
        self._reset_period: float | None = None
        self._next_reset = 0.0
        self._stopping = False
        self._halted = threading.Event()
        self._lock = threading.Lock()
        self._stats = ProxyStats()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._started = False

    # ------------------------------------------------------------ public

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> FaultProxy:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def close(self) -> None:
        """Close every connection and the listener; join the thread. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._halted.set()
        self._wake()
        if self._started:
            self._thread.join(_CONTROL_TIMEOUT)
            if self._thread.is_alive():
                raise AssertionError("the proxy thread did not stop")
        else:
            self._shutdown()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> ProxyStats:
        with self._lock:
            return self._stats

    def delay(self, *, down: float = 0.0, up: float = 0.0) -> None:
        """Hold every later chunk ``down`` (answers) / ``up`` (requests) seconds."""

        def apply() -> None:
            self._delay_down, self._delay_up = down, up

        self._control(apply)

    def blackhole(self) -> None:
        """Stop moving bytes and hold new connections unanswered until :meth:`heal`."""

        def apply() -> None:
            self._blackholed = True

        self._control(apply)

    def heal(self) -> None:
        """End every fault: held bytes go now, held connections are connected upstream."""

        def apply() -> None:
            self._blackholed = False
            self._reset_period = None
            self._delay_up = self._delay_down = 0.0
            for conn in list(self._connections):
                for side in (conn.client, conn.upstream):
                    side.outbox = collections.deque((0.0, data) for _, data in side.outbox)
                if conn.upstream.sock is None:
                    self._connect(conn)

        self._control(apply)

    def cut(self) -> int:
        """Close every connection with a FIN; how many there were."""

        def apply() -> int:
            conns = list(self._connections)
            for conn in conns:
                self._close(conn, abort=False)
            return len(conns)

        result: int = self._control(apply)
        return result

    def reset(self) -> int:
        """Abort every connection with an RST; how many there were."""

        result: int = self._control(self._reset_all)
        return result

    def reset_every(self, period: float) -> None:
        """Reset every connection now and then every ``period`` seconds, until :meth:`heal`."""

        def apply() -> None:
            self._reset_period = period
            self._next_reset = time.monotonic()

        self._control(apply)

    # ----------------------------------------------------------- control

    def _control(self, fn: Callable[[], Any]) -> Any:
        if self._stopping:
            raise RuntimeError("the proxy is closed")
        future: Future[Any] = Future()
        self._commands.put((fn, future))
        self._wake()
        if not self._started:
            self._run_commands()
        return future.result(_CONTROL_TIMEOUT)

    def _wake(self) -> None:
        # A full wake-up socket is already a pending wake-up; a closed one, a closing proxy.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _reset_all(self) -> int:
        conns = list(self._connections)
        for conn in conns:
            self._close(conn, abort=True)
        self._count(resets=len(conns), reset_rounds=1)
        return len(conns)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = dataclasses.replace(self._stats, **values)

    # -------------------------------------------------------------- loop

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping:
                try:
                    self._step()
                    failures = 0
                except Exception as exc:  # kept for the test to see; the loop goes on
                    logger.exception("fault proxy loop failed")
                    self.errors.append(exc)
                    failures += 1
                    # Back off, so a failure that repeats does not spin the CPU.
                    self._halted.wait(min(0.05 * 2 ** min(failures, 5), 1.0))
        finally:
            self._shutdown()

    def _step(self) -> None:
        self._run_commands()
        now = time.monotonic()
        if self._reset_period is not None and now >= self._next_reset:
            self._reset_all()
            self._next_reset = now + self._reset_period
        if not self._blackholed:
            for conn in list(self._connections):
                self._flush(conn, now)
        for conn in self._connections:
            self._update_interest(conn)
        for key, mask in self._selector.select(self._next_timeout(time.monotonic())):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                conn, side = key.data
                if conn not in self._connections:
                    continue  # closed by an earlier event of this round
                if mask & selectors.EVENT_READ:
                    self._read(conn, side)
                if mask & selectors.EVENT_WRITE and conn in self._connections:
                    self._flush(conn, time.monotonic())

    def _next_timeout(self, now: float) -> float | None:
        dues = [] if self._reset_period is None else [self._next_reset]
        if not self._blackholed:
            dues += [
                side.outbox[0][0]
                for conn in self._connections
                for side in (conn.client, conn.upstream)
                if side.outbox and not side.want_write
            ]
        return max(0.0, min(dues) - now) if dues else None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            if len(self._connections) >= self.max_connections:
                _abort(sock)
                continue
            conn = _Connection(sock)
            self._connections.append(conn)
            self._count(connections=1, active=1)
            if not self._blackholed:
                self._connect(conn)

    def _connect(self, conn: _Connection) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT)
        except OSError:
            self._close(conn, abort=True)
            return
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.upstream.sock = upstream

    def _update_interest(self, conn: _Connection) -> None:
        established = conn.upstream.sock is not None
        for side in (conn.client, conn.upstream):
            if side.sock is None:
                continue
            target = conn.other(side)
            events = 0
            if (
                established
                and not self._blackholed
                and not side.eof
                and target.held < self.max_buffered
            ):
                events |= selectors.EVENT_READ
            if side.want_write and not self._blackholed:
                events |= selectors.EVENT_WRITE
            if events == side.events:
                continue
            if side.events and events:
                self._selector.modify(side.sock, events, (conn, side))
            elif events:
                self._selector.register(side.sock, events, (conn, side))
            else:
                self._selector.unregister(side.sock)
            side.events = events

    def _read(self, conn: _Connection, side: _Side) -> None:
        assert side.sock is not None
        try:
            data = side.sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer: pass the reset on
            self._close(conn, abort=True)
            return
        target = conn.other(side)
        if not data:
            side.eof = True
            self._finish_if_done(conn)
            return
        now = time.monotonic()
        if side is conn.client:
            streams, requests = conn.counter.feed(data)
            self._count(bytes_up=len(data), streams=streams, requests=requests)
            due = now + self._delay_up
        else:
            self._count(bytes_down=len(data))
            due = now + self._delay_down
        if target.outbox:
            due = max(due, target.outbox[-1][0])  # never reorder
        target.outbox.append((due, data))
        target.held += len(data)
        self._flush(conn, now)

    def _flush(self, conn: _Connection, now: float) -> None:
        if self._blackholed:
            return
        for side in (conn.client, conn.upstream):
            if side.sock is None:
                continue
            side.want_write = False
            while side.outbox and side.outbox[0][0] <= now:
                due, data = side.outbox[0]
                try:
                    sent = side.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._close(conn, abort=True)
                    return
                side.held -= sent
                if sent < len(data):
                    side.outbox[0] = (due, data[sent:])
                    side.want_write = True  # the selector says when there is room again
                    break
                side.outbox.popleft()
        self._finish_if_done(conn)

    def _finish_if_done(self, conn: _Connection) -> None:
        """A side that closed, once its bytes are through, closes the other side too."""
        for side in (conn.client, conn.upstream):
            if side.eof and not conn.other(side).outbox:
                self._close(conn, abort=False)
                return

    def _close(self, conn: _Connection, *, abort: bool) -> None:
        if conn not in self._connections:
            return
        self._connections.remove(conn)
        self._count(active=-1)
        for side in (conn.client, conn.upstream):
            sock = side.sock
            if sock is None:
                continue
            if side.events:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            side.events = 0
            if abort:
                _abort(sock)
            else:
                _close_gracefully(sock)

    def _shutdown(self) -> None:
        for conn in list(self._connections):
            self._close(conn, abort=True)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        while True:  # whoever still waits on a command is told the proxy is gone
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                break
            future.set_exception(RuntimeError("the proxy is closed"))


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _close_gracefully(sock: socket.socket) -> None:
    # Unread bytes would turn close() into an RST on Linux: read them first.
    try:
        while sock.recv(_CHUNK):
            pass
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
