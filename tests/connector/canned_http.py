"""A loopback HTTP server answering what a test tells it to: the faults a real
Polaris server never produces (a proxy's error page, a body without a code, a
connection dropped mid-answer, silence), over a real socket."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OK_BODY = b'{"code":200000,"info":"execute success"}'


@dataclass
class Answer:
    status: int = 200
    body: bytes = OK_BODY
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    drop: bool = False
    """Close the connection without answering."""
    hold: threading.Event | None = None
    """Answer only once this is set (or after 10 s)."""


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class CannedHttpServer:
    """Answers queued :class:`Answer` objects in order, then plain success."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: collections.deque[Answer] = collections.deque()
        self.received: list[Received] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="polaris-test-http",
            daemon=True,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def answer_next(self, *answers: Answer) -> None:
        with self._lock:
            self._answers.extend(answers)

    def _next(self, received: Received) -> Answer:
        with self._lock:
            self.received.append(received)
            return self._answers.popleft() if self._answers else Answer()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                answer = server._next(
                    Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                if answer.hold is not None:
                    answer.hold.wait(10)
                if answer.drop:
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> CannedHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


def canned_server() -> Iterator[CannedHttpServer]:
    with CannedHttpServer() as server:
        yield server
