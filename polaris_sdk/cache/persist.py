"""Disk backup of service snapshots, for a cold start while the server is unreachable.

Guarantees:

* Off unless a directory is given: nothing is ever written to the user's
  home or the working directory by surprise.
* One JSON file per service (``svc#<namespace>#<service>.json``, each part
  percent-encoded, so any valid name is a safe file name on every OS),
  written atomically: a temporary file in the same directory, flushed and
  fsynced, then renamed over the old one. A reader sees the old file or the
  new one, never a torn one.
* Failures never reach the caller: a missing directory is created, and if
  that fails, or the directory is read-only or full, the error is logged
  (a warning the first time, then at debug level until a write succeeds
  again) and the cache carries on without a backup. A corrupt or foreign
  file loads as nothing, with a warning.
* ``updated_at`` in a loaded snapshot is when the server last confirmed it:
  the time written in the file or the file's modification time, whichever is
  later; :meth:`DiskBackup.touch` moves the latter forward cheaply when the
  server re-confirms an unchanged snapshot.
* Calls are thread-safe; writes of different services do not contend.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from polaris_sdk.model import Instance, ServiceInstances, ServiceKey, frozen_metadata

__all__ = ["FORMAT_VERSION", "DiskBackup"]

logger = logging.getLogger("polaris_sdk.cache.persist")

FORMAT_VERSION: Final = 1
_INSTANCE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Instance))


def _instance_to_json(instance: Instance) -> dict[str, Any]:
    data = {name: getattr(instance, name) for name in _INSTANCE_FIELDS}
    data["metadata"] = dict(instance.metadata)
    return data


def _instance_from_json(data: dict[str, Any]) -> Instance:
    known = {k: v for k, v in data.items() if k in _INSTANCE_FIELDS}
    known["metadata"] = frozen_metadata(known.get("metadata"))
    return Instance(**known)


class DiskBackup:
    """Snapshots of services as files in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._failing = False
        self._lock = threading.Lock()

    def path_for(self, key: ServiceKey) -> Path:
        name = f"svc#{quote(key.namespace, safe='')}#{quote(key.service, safe='')}.json"
        return self.directory / name

    def save(self, snapshot: ServiceInstances) -> bool:
        """Write ``snapshot`` atomically; False (and a log line) when that failed."""
        document = {
            "format": FORMAT_VERSION,
            "namespace": snapshot.namespace,
            "service": snapshot.service,
            "revision": snapshot.revision,
            "updated_at": snapshot.updated_at,
            "metadata": dict(snapshot.metadata),
            "instances": [_instance_to_json(i) for i in snapshot.instances],
        }
        target = self.path_for(snapshot.service_key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(document, handle, separators=(",", ":"))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._report_failure("write", target, exc)
            return False
        self._report_success()
        return True

    def touch(self, key: ServiceKey, at: float) -> None:
        """Record that the server re-confirmed the saved snapshot at ``at``."""
        try:
            os.utime(self.path_for(key), (at, at))
        except OSError as exc:
            logger.debug("cannot touch backup of %s: %s", key, exc)

    def load(self, key: ServiceKey) -> ServiceInstances | None:
        """The saved snapshot of ``key``, marked ``from_backup``; None if there is none."""
        path = self.path_for(key)
        try:
            with path.open(encoding="utf-8") as handle:
                document = json.load(handle)
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cannot read backup %s: %s", path, exc)
            return None
        try:
            if document.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown format {document.get('format')!r}")
            if (document["namespace"], document["service"]) != (key.namespace, key.service):
                raise ValueError("file holds another service")
            return ServiceInstances(
                namespace=key.namespace,
                service=key.service,
                revision=str(document["revision"]),
                instances=tuple(_instance_from_json(i) for i in document["instances"]),
                metadata=frozen_metadata(document.get("metadata")),
                updated_at=max(float(document["updated_at"]), mtime),
                from_backup=True,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("ignoring backup %s: %s", path, exc)
            return None

    def _report_failure(self, action: str, path: Path, exc: OSError) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            logger.warning(
                "cannot %s backup %s: %s; carrying on without a disk backup", action, path, exc
            )
        else:
            logger.debug("cannot %s backup %s: %s", action, path, exc)

    def _report_success(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False
            logger.info("disk backup in %s works again", self.directory)
