from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.consumer.helpers import make_instance

KEY = ServiceKey("default", "echo")


def snapshot(updated_at: float | None = None) -> ServiceInstances:
    return ServiceInstances(
        "default",
        "echo",
        "rev-7",
        (
            make_instance(1, metadata={"env": "prod"}),
            make_instance(2, weight=7, healthy=False, isolated=True),
        ),
        metadata={"owner": "team"},
        updated_at=updated_at if updated_at is not None else time.time(),
    )


def test_round_trip(tmp_path: Path) -> None:
    backup = DiskBackup(tmp_path)
    original = snapshot()
    assert backup.save(original)
    loaded = backup.load(KEY)
    assert loaded is not None
    assert loaded.from_backup and not original.from_backup
    assert loaded.instances == original.instances
    assert loaded.revision == "rev-7"
    assert dict(loaded.metadata) == {"owner": "team"}
    assert loaded.updated_at >= original.updated_at


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    backup = DiskBackup(tmp_path)
    backup.save(snapshot())
    backup.save(snapshot())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["svc#default#echo.json"]
    json.loads((tmp_path / files[0]).read_text())


def test_names_with_odd_characters_are_safe_file_names(tmp_path: Path) -> None:
    backup = DiskBackup(tmp_path)
    key = ServiceKey("ns:a/b", "svc/x:y")
    path = backup.path_for(key)
    assert path.parent == tmp_path
    assert "/" not in path.name and ":" not in path.name
    assert backup.save(ServiceInstances(key.namespace, key.service, "r", ()))
    assert backup.load(key) is not None


def test_missing_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert DiskBackup(target).save(snapshot())
    assert DiskBackup(target).load(KEY) is not None


def test_load_of_an_unknown_service_is_none(tmp_path: Path) -> None:
    assert DiskBackup(tmp_path).load(KEY) is None
    assert DiskBackup(tmp_path / "missing").load(KEY) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_directory_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tmp_path.chmod(0o500)
    try:
        backup = DiskBackup(tmp_path)
        with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.persist"):
            assert not backup.save(snapshot())
            assert not backup.save(snapshot())
        assert sum("cannot write backup" in r.getMessage() for r in caplog.records) == 1
    finally:
        tmp_path.chmod(0o700)


def test_unwritable_location_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A regular file where the directory should be: fails for root too.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backup = DiskBackup(blocker / "backup")
    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.persist"):
        assert not backup.save(snapshot())
        assert not backup.save(snapshot())
    warnings = [r for r in caplog.records if "cannot write backup" in r.getMessage()]
    assert len(warnings) == 1  # then quiet until it works again
    assert backup.load(KEY) is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"format": 99}),
        json.dumps({"format": 1, "namespace": "default", "service": "other", "revision": "r"}),
        json.dumps(
            {
                "format": 1,
                "namespace": "default",
                "service": "echo",
                "revision": "r",
                "updated_at": 0,
                "instances": [{"bogus": 1}],
            }
        ),
    ],
)
def test_corrupt_or_foreign_files_load_as_nothing(tmp_path: Path, content: str) -> None:
    backup = DiskBackup(tmp_path)
    backup.path_for(KEY).write_text(content)
    assert backup.load(KEY) is None


def test_touch_moves_the_age_forward(tmp_path: Path) -> None:
    backup = DiskBackup(tmp_path)
    long_ago = time.time() - 3600
    backup.save(snapshot(updated_at=long_ago))
    os.utime(backup.path_for(KEY), (long_ago, long_ago))
    loaded = backup.load(KEY)
    assert loaded is not None and loaded.age > 3500
    backup.touch(KEY, time.time())
    loaded = backup.load(KEY)
    assert loaded is not None and loaded.age < 60


def test_read_only_filesystem_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EROFS cannot be produced for real without mounting; inject it.
    import errno
    import tempfile

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    backup = DiskBackup(tmp_path)
    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.persist"):
        assert not backup.save(snapshot())
    assert any("Read-only" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="polaris_sdk.cache.persist"):
        assert backup.save(snapshot())
    assert any("works again" in r.getMessage() for r in caplog.records)
