"""Leases on a shared instance: several processes serving one host:port register it once.

Prefork servers (gunicorn ``-w``, uvicorn ``--workers``, multiprocessing)
run several processes on one listening socket; each registers the same
instance (same namespace, service, host, port, so the same id). Without
coordination the first to stop deregisters it while the others still serve.

Contract:

* One lease file per instance in a runtime directory
  (``provider.leaseDir``), named by a hash of the instance key, listing its
  holders one a line: ``pid starttime token``. A holder is one registration
  in one process (``token`` tells apart two contexts of one process);
  ``starttime`` (Linux ``/proc``) guards against a reused pid.
* Every change happens under an exclusive ``fcntl.flock`` of the file, and
  drops the holders whose process is gone (killed, ``kill -9`` included) or
  is a zombie: no process manager hook is needed to clean up.
* :meth:`Leases.join` adds a holder before its registration is sent.
  :meth:`Leases.leave` removes it and says whether it was the last one,
  keeping the lock until the caller's deregistration is done: a process
  joining meanwhile waits, so its registration always lands after that
  deregistration, never before it.
* Heartbeats are every holder's own: each process keeps the instance alive,
  so a worker recycle never lets it lapse.
* Without ``fcntl`` (not POSIX) or with an unusable directory, every
  process is taken as the only holder (the behaviour without leases), with
  one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

__all__ = ["Leases", "Leaving", "default_lease_dir", "lease_key"]

logger = logging.getLogger("polaris_sdk.provider.lease")

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_SUFFIX: Final = ".lease"


def default_lease_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "polaris_sdk"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"polaris_sdk-{uid}"


def _process(pid: int) -> tuple[bool, str]:
    """Whether ``pid`` is a live (not zombie) process, and its start time ('' if unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False, ""
    except OSError:
        stat = ""
    if stat:
        fields = stat.rsplit(")", 1)[-1].split()
        return fields[0] not in ("Z", "X"), fields[19] if len(fields) > 19 else ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, ""
    except PermissionError:
        pass
    return True, ""


def lease_key(namespace: str, service: str, host: str, port: int, vpc_id: str = "") -> str:
    """What names a shared instance: the fields its id is computed from."""
    return "\0".join((namespace, service, vpc_id, host, str(port)))


class Leaving:
    """A holder just removed; the lease stays locked until :meth:`release`."""

    __slots__ = ("_file", "others")

    def __init__(self, file: IO[str] | None, others: int) -> None:
        self._file = file
        self.others = others
        """Holders left: 0 means the caller was the last and deregisters."""

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def __enter__(self) -> Leaving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Leases:
    """The lease files of one registering flow (one process, one context)."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, enabled: bool = True
    ) -> None:
        self._enabled = enabled and fcntl is not None
        self._dir = Path(directory) if directory else default_lease_dir()
        self._token = uuid.uuid4().hex[:12]
        self._warned = False

    def _reset_after_fork(self) -> None:
        self._token = uuid.uuid4().hex[:12]

    def _me(self) -> str:
        pid = os.getpid()
        return f"{pid} {_process(pid)[1] or '-'} {self._token}"

    def path(self, key: str) -> Path:
        return self._dir / (hashlib.sha1(key.encode()).hexdigest()[:24] + _SUFFIX)

    def holders(self, key: str) -> list[str]:
        """The live holders of ``key`` (for diagnostics)."""
        with self._locked(key) as f:
            return [] if f is None else self._live(f)

    def join(self, key: str) -> int:
        """Hold ``key``; the number of holders now (this one included)."""
        with self._locked(key) as f:
            if f is None:
                return 1
            holders = [h for h in self._live(f) if h != self._me()]
            holders.append(self._me())
            self._write(f, holders)
            return len(holders)

    def leave(self, key: str) -> Leaving:
        """Stop holding ``key``; the answer says how many others still hold it.

        The lock is held until :meth:`Leaving.release` (or the end of a
        ``with`` block): deregister in between when nobody else holds it.
        """
        f = self._open_locked(key)
        if f is None:
            return Leaving(None, 0)
        try:
            others = [h for h in self._live(f) if h != self._me()]
            self._write(f, others)
        except BaseException:
            f.close()
            raise
        return Leaving(f, len(others))

    # ------------------------------------------------------------ internal

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[IO[str] | None]:
        f = self._open_locked(key)
        try:
            yield f
        finally:
            if f is not None:
                f.close()  # releases the lock

    def _open_locked(self, key: str) -> IO[str] | None:
        """The lease file of ``key``, open and locked; None when leases cannot be used."""
        if not self._enabled:
            return None
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            f = open(self.path(key), "a+")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "no lease files in %s (%s): instances are not shared", self._dir, exc
                )
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except BaseException:
            f.close()
            raise
        return f

    @staticmethod
    def _live(f: IO[str]) -> list[str]:
        f.seek(0)
        holders = []
        for line in f.read().splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            alive, started = _process(int(parts[0]))
            if alive and (parts[1] in ("-", started) or not started):
                holders.append(line.strip())
        return holders

    @staticmethod
    def _write(f: IO[str], holders: list[str]) -> None:
        f.seek(0)
        f.truncate()
        f.write("".join(h + "\n" for h in holders))
        f.flush()
