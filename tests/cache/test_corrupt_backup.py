"""A damaged disk backup loads as nothing for its service, with a warning.

Through the public API: a consumer cold-starting while the server is
unreachable must treat a corrupt file as no backup at all (a NetworkError, as
without one), never crash with RecursionError or TypeError, and never hand out
an address no server would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polaris_sdk import ConsumerAPI, NetworkError
from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.connector.servers import fast_config, unused_port
from tests.consumer.helpers import make_instance

KEY = ServiceKey("default", "echo")


def saved_document(tmp_path: Path) -> dict[str, Any]:
    """The JSON document of a good backup of ``default/echo`` with two instances."""
    backup = DiskBackup(tmp_path)
    snapshot = ServiceInstances(
        "default", "echo", "rev-1", (make_instance(1), make_instance(2, metadata={"k": "v"}))
    )
    assert backup.save(snapshot)
    document: dict[str, Any] = json.loads(backup.path_for(KEY).read_text(encoding="utf-8"))
    return document


def first_instance(change: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def corrupt(document: dict[str, Any]) -> None:
        document["instances"][0].update(change)

    return corrupt


def top_level(change: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def corrupt(document: dict[str, Any]) -> None:
        document.update(change)

    return corrupt


CORRUPTIONS = {
    "weight not a number": first_instance({"weight": "abc"}),
    "port not a number": first_instance({"port": "x"}),
    "port out of range": first_instance({"port": 70000}),
    "port a bool": first_instance({"port": True}),
    "host empty": first_instance({"host": ""}),
    "host not a string": first_instance({"host": 5}),
    "host too long": first_instance({"host": "h" * 129}),
    "healthy a string": first_instance({"healthy": "no"}),
    "isolated a number": first_instance({"isolated": 1}),
    "metadata a list": first_instance({"metadata": ["k", "v"]}),
    "metadata value not a string": first_instance({"metadata": {"k": 1}}),
    "metadata value too long": first_instance({"metadata": {"k": "v" * 4097}}),
    "ttl a string": first_instance({"ttl": "5"}),
    "priority negative": first_instance({"priority": -1}),
    "protocol too long": first_instance({"protocol": "p" * 33}),
    "region not a string": first_instance({"region": ["r"]}),
    "service name invalid": first_instance({"service": "bad name!"}),
    "id missing": first_instance({"id": None}),
    "instance not an object": top_level({"instances": [1, 2]}),
    "instances not a list": top_level({"instances": {"a": 1}}),
    "revision not a string": top_level({"revision": ["r"]}),
    "updated_at a string": top_level({"updated_at": "yesterday"}),
    "service metadata a string": top_level({"metadata": "ab"}),
}


@pytest.fixture
def consumer(tmp_path: Path, no_thread_leak: None) -> Iterator[ConsumerAPI]:
    """A consumer whose only server address is dead, backed up in ``tmp_path``."""
    config = fast_config(
        f"127.0.0.1:{unused_port()}",
        persist_dir=str(tmp_path),
        **{"global.api.timeout": "500ms", "global.api.maxRetryTimes": 0},
    )
    with ConsumerAPI.create(config) as api:
        yield api


def test_a_good_backup_serves_the_cold_start(tmp_path: Path, consumer: ConsumerAPI) -> None:
    saved_document(tmp_path)
    snapshot = consumer.get_all_instances(service="echo")
    assert snapshot.from_backup and sorted(i.port for i in snapshot) == [1, 2]


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_field_loads_as_no_backup_with_a_warning(
    tmp_path: Path,
    consumer: ConsumerAPI,
    caplog: pytest.LogCaptureFixture,
    corrupt: Callable[[dict[str, Any]], None],
) -> None:
    document = saved_document(tmp_path)
    corrupt(document)
    DiskBackup(tmp_path).path_for(KEY).write_text(json.dumps(document), encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.persist"):
        for call in (consumer.get_all_instances, consumer.get_one_instance):
            with pytest.raises(NetworkError):
                call(service="echo")
    assert any("backup" in r.getMessage() for r in caplog.records)


def test_deeply_nested_json_loads_as_no_backup(
    tmp_path: Path, consumer: ConsumerAPI, caplog: pytest.LogCaptureFixture
) -> None:
    saved_document(tmp_path)
    DiskBackup(tmp_path).path_for(KEY).write_text("[" * 100_000 + "]" * 100_000)

    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.persist"):
        with pytest.raises(NetworkError):
            consumer.get_all_instances(service="echo")
        with pytest.raises(NetworkError):
            consumer.get_one_instance(service="echo")
    assert any("backup" in r.getMessage() for r in caplog.records)


def test_server_added_metadata_beyond_64_entries_still_loads(
    tmp_path: Path, consumer: ConsumerAPI
) -> None:
    document = saved_document(tmp_path)
    document["instances"][0]["metadata"] = {f"k{i}": "v" for i in range(70)}
    DiskBackup(tmp_path).path_for(KEY).write_text(json.dumps(document), encoding="utf-8")

    snapshot = consumer.get_all_instances(service="echo")
    assert snapshot.from_backup and len(snapshot) == 2
