"""A headless Chromium driven over the DevTools protocol on a pipe (no extra packages).

``--remote-debugging-pipe`` makes Chromium read protocol messages from fd 3
and write them to fd 4, each a JSON object ended by a NUL byte.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

CALL_TIMEOUT = 30.0


def chromium_or_skip() -> str:
    """The chromium executable; skips the test without one, but fails in CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed; .ci/run installs it before the tests")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")


class Browser:
    """One headless Chromium with one page; :meth:`close` ends the process."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # runs in the child, before exec
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,  # only dup2 calls, before exec
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._ids = itertools.count(1)
        self._answers: dict[int, Any] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="polaris-test-chromium")
        self._reader.start()
        self._session = ""

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_child, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._arrived:
                            self._answers[message["id"]] = message
                            self._arrived.notify_all()
        with self._arrived:
            self._answers[-1] = None
            self._arrived.notify_all()

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> Any:
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        with self._arrived:
            done = self._arrived.wait_for(
                lambda: call_id in self._answers or -1 in self._answers, CALL_TIMEOUT
            )
            answer = self._answers.pop(call_id, None)
        if not done or answer is None:
            raise AssertionError(f"chromium did not answer {method}")
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url}, session=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, False
        )
        self._session = attached["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close", session=False)
        try:
            self.process.wait(timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=CALL_TIMEOUT)
        os.close(self._to_child)
        self._reader.join(CALL_TIMEOUT)
