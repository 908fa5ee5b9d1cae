"""Server processes for the framework tests: start, watch, signal and clean up by pid.

A :class:`Served` is one command (uvicorn, gunicorn, ``flask run``,
``manage.py runserver``, a script) started from the repository root with
its output in a file; :func:`children` / :func:`workers` read its worker
processes from ``/proc``. Everything started is ended by pid in
:meth:`Served.close`, children first. :class:`Watch` samples what the
registry holds for a service while a test does something to the processes,
so a test can say the instance never went missing, or when it went.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from polaris_sdk.testing import PolarisTestServer
from tests.support import wait_until

__all__ = [
    "BIN",
    "ROOT",
    "Sample",
    "Served",
    "Watch",
    "children",
    "free_port",
    "gone",
    "workers",
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def workers(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.append(child)
    return found


def gone(pid: int) -> bool:
    """The process has exited (reaped or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Served:
    """One server process started by a test; see the module docstring."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid
        self._known: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, prefix: str) -> list[str]:
        """Output lines starting with ``prefix`` (what the test apps print), in order."""
        return [line for line in self.output().splitlines() if line.startswith(prefix)]

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        wait_until(
            lambda: text in self.output() or self.proc.poll() is not None,
            timeout=timeout,
            message=f"{text!r} not printed:\n{self.output()[-3000:]}",
        )
        assert text in self.output(), f"exited ({self.proc.returncode}):\n{self.output()[-3000:]}"

    def workers(self, count: int | None = None, timeout: float = 30.0) -> list[int]:
        """The worker pids; with ``count``, once there are that many."""
        if count is None:
            found = workers(self.pid)
        else:
            found = wait_until(
                lambda: (w := workers(self.pid)) and len(w) == count and w,
                timeout=timeout,
                message=f"not {count} workers:\n{self.output()[-3000:]}",
            )
        self._known.update(found)
        return found

    def send(self, sig: int = signal.SIGTERM) -> None:
        self._known.update(children(self.pid))
        self.proc.send_signal(sig)

    def signal_worker(self, pid: int, sig: int = signal.SIGTERM) -> None:
        assert pid in children(self.pid), f"{pid} is not a worker of {self.pid}"
        self._known.add(pid)
        os.kill(pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill whatever is left of it (children first) and reap it."""
        for pid in [*children(self.pid), *self._known]:
            _kill(pid)
        if self.proc.poll() is None:
            _kill(self.pid)
        self.proc.wait(timeout=20)
        self._out.close()


def get(port: int, path: str = "/hello", timeout: float = 2.0) -> tuple[int, str] | None:
    """``GET http://127.0.0.1:port/path``: (status, body), or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()


@dataclass(frozen=True)
class Sample:
    t: float
    ports: tuple[int, ...]
    """Ports of the service's healthy instances at ``t``."""


class Watch:
    """Samples the healthy instances of ``service`` every few milliseconds, in a thread."""

    def __init__(self, server: PolarisTestServer, service: str, interval: float = 0.02) -> None:
        self._server = server
        self._service = service
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._thread = threading.Thread(target=self._run, name="test-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            ports = tuple(i.port for i in self._server.instances(self._service) if i.healthy)
            with self._lock:
                self._samples.append(Sample(time.monotonic(), ports))
            self._stop.wait(self._interval)

    def samples(self, since: float = 0.0) -> list[Sample]:
        with self._lock:
            return [s for s in self._samples if s.t >= since]

    def missing(self, port: int, since: float = 0.0) -> list[Sample]:
        """The samples since ``since`` in which ``port`` was not registered and healthy."""
        return [s for s in self.samples(since) if port not in s.ports]

    def first(self, predicate: Callable[[Sample], bool], since: float = 0.0) -> Sample | None:
        return next((s for s in self.samples(since) if predicate(s)), None)
