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
  file loads as nothing, with a warning: every field is checked with the
  registration rules of :mod:`polaris_sdk.validation` (types, sizes,
  ranges), so a damaged file can neither crash a consumer call nor hand
  callers an address no server would.
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
import math
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from polaris_sdk.model import Instance, ServiceInstances, ServiceKey, frozen_metadata
from polaris_sdk.validation import (
    check_flag,
    check_instance,
    check_instance_id,
    check_metadata,
    check_text,
    check_ttl,
)

__all__ = ["FORMAT_VERSION", "DiskBackup"]

logger = logging.getLogger("polaris_sdk.cache.persist")

FORMAT_VERSION: Final = 1
_INSTANCE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Instance))
_REQUIRED_FIELDS: Final = ("id", "namespace", "service", "host", "port")
_CHECKED_FIELDS: Final = (
    "protocol",
    "version",
    "logic_set",
    "weight",
    "vpc_id",
    "region",
    "zone",
    "campus",
    "priority",
)


def _instance_to_json(instance: Instance) -> dict[str, Any]:
    data = {name: getattr(instance, name) for name in _INSTANCE_FIELDS}
    data["metadata"] = dict(instance.metadata)
    return data


class CorruptBackup(ValueError):
    """A backup file that does not hold a valid snapshot."""


def _check_backed_up_instance(data: Mapping[str, Any]) -> None:
    """The registration rules, so a file cannot hand callers what no server would.

    The metadata count is not checked: a server adds keys of its own
    (``version``, ``protocol``, the location) to an instance's 64.
    """
    missing = [name for name in _REQUIRED_FIELDS if data.get(name) is None]
    if missing:
        raise CorruptBackup(f"an instance has no {missing[0]!r}")
    check_instance(
        namespace=data["namespace"],
        service=data["service"],
        host=data["host"],
        port=data["port"],
        **{name: data.get(name) for name in _CHECKED_FIELDS},
    )
    check_instance_id(data["id"])
    check_metadata(data.get("metadata"), count=False)
    check_ttl(data.get("ttl"))
    for name in ("healthy", "isolated"):
        check_flag(name, data.get(name))
    check_text("revision", data.get("revision", ""), 0)


def _instance_from_json(data: Any) -> Instance:
    if not isinstance(data, Mapping):
        raise CorruptBackup("an instance is not an object")
    _check_backed_up_instance(data)
    known = {k: v for k, v in data.items() if k in _INSTANCE_FIELDS and v is not None}
    known["metadata"] = frozen_metadata(known.get("metadata"))
    return Instance(**known)


def _snapshot_from_json(key: ServiceKey, document: Any, mtime: float) -> ServiceInstances:
    """The snapshot a backup file holds, every field checked; CorruptBackup if it is not one."""
    if not isinstance(document, Mapping):
        raise CorruptBackup("not a JSON object")
    if document.get("format") != FORMAT_VERSION:
        raise CorruptBackup(f"unknown format {document.get('format')!r}")
    if (document.get("namespace"), document.get("service")) != (key.namespace, key.service):
        raise CorruptBackup("file holds another service")
    revision = check_text("revision", document.get("revision"), 0)
    updated_at = document.get("updated_at")
    if isinstance(updated_at, bool) or not isinstance(updated_at, int | float):
        raise CorruptBackup("updated_at is not a number")
    if not math.isfinite(updated_at):
        raise CorruptBackup("updated_at is not finite")
    metadata = document.get("metadata")
    check_metadata(metadata, count=False)
    instances = document.get("instances")
    if not isinstance(instances, list):
        raise CorruptBackup("instances is not a list")
    return ServiceInstances(
        namespace=key.namespace,
        service=key.service,
        revision=revision,
        instances=tuple(_instance_from_json(i) for i in instances),
        metadata=frozen_metadata(metadata),
        updated_at=max(float(updated_at), mtime),
        from_backup=True,
    )


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
        """The saved snapshot of ``key``, marked ``from_backup``; None if there is none.

        A file that is not a valid snapshot (not JSON, nested too deep to
        parse, a field of the wrong type or breaking a registration rule)
        loads as None, with a warning naming the file and the fault.
        """
        path = self.path_for(key)
        try:
            with path.open(encoding="utf-8") as handle:
                document = json.load(handle)
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:
            logger.warning("cannot read backup %s: %s", path, exc)
            return None
        try:
            return _snapshot_from_json(key, document, mtime)
        except ValueError as exc:  # CorruptBackup, or a ValidationError naming the field
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
