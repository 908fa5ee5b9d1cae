"""Real greeter processes (examples/greeter.py) registered with an embedded server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from polaris_sdk.server import PolarisServer
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
GREETER = ROOT / "examples" / "greeter.py"
RATE = 20.0
"""Requests per second of the load loops."""


class Greeter:
    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc = proc
        self.out = out
        self.port = 0

    def ready(self) -> bool:
        text = self.out.read_text(encoding="utf-8") if self.out.exists() else ""
        for line in text.splitlines():
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                return True
        if self.proc.poll() is not None:
            raise AssertionError(f"greeter exited {self.proc.returncode}: {text}")
        return False

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextmanager
def greeters(
    server: PolarisServer, tmp_path: Path, kind: str, count: int = 3
) -> Iterator[list[Greeter]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARIS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started: list[Greeter] = []
    try:
        for n in range(count):
            out = tmp_path / f"greeter-{kind}-{n}.out"
            with out.open("wb") as sink:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        str(GREETER),
                        "--polaris",
                        server.grpc_address,
                        "--kind",
                        kind,
                    ],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            started.append(Greeter(proc, out))
        for greeter in started:
            wait_until(greeter.ready, 60, message=f"{greeter.out} never said READY")
        yield started
    finally:
        for greeter in started:
            if greeter.proc.poll() is None:
                greeter.proc.terminate()
        for greeter in started:
            try:
                greeter.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                greeter.proc.kill()
                greeter.proc.wait(timeout=10)


def paced(count: int, rate: float = RATE) -> Iterator[int]:
    """``range(count)``, yielding each index at its turn of a fixed rate (a load pacer)."""
    start = time.monotonic()
    pause = threading.Event()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            pause.wait(delay)
        yield i


class Attempts:
    """(time, port) of every attempt a client made; thread-safe."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def add(self, port: int) -> None:
        with self._lock:
            self.seen.append((time.monotonic(), port))

    def to(self, port: int, after: float) -> list[float]:
        with self._lock:
            return [t for t, p in self.seen if p == port and t > after]


Sender = Callable[[], object]
