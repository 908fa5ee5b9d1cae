"""SDKContext: creation from the configuration sources, components, closing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from polaris_sdk import ClosedError, Configuration, SDKContext
from polaris_sdk.connector import GrpcConnector

ENV_KEYS = ("POLARIS_CONFIG", "POLARIS_ADDRESSES", "POLARIS_TOKEN", "POLARIS_API_TIMEOUT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_create_without_arguments_falls_back_to_localhost(
    clean_env: Path, no_thread_leak: None
) -> None:
    with SDKContext.create() as ctx:
        assert ctx.config == Configuration()
        assert ctx.config.server_connector.addresses == ("127.0.0.1:8091",)
        assert isinstance(ctx.connector, GrpcConnector)
        assert not ctx.closed
    assert ctx.closed


def test_create_reads_polaris_yaml_then_environment_then_arguments(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, no_thread_leak: None
) -> None:
    (clean_env / "polaris.yaml").write_text(
        "global:\n  serverConnector:\n    addresses: [10.1.1.1:8091]\n  api:\n    timeout: 7s\n",
        encoding="utf-8",
    )
    with SDKContext.create() as ctx:
        assert ctx.config.server_connector.addresses == ("10.1.1.1:8091",)
        assert ctx.config.api.timeout == 7.0
    monkeypatch.setenv("POLARIS_ADDRESSES", "10.2.2.2:8091")
    with SDKContext.create() as ctx:
        assert ctx.config.server_connector.addresses == ("10.2.2.2:8091",)
        assert ctx.config.api.timeout == 7.0
    with SDKContext.create(
        addresses=["10.3.3.3:8091"], token="t", refresh_interval="1s", persist_dir=str(clean_env)
    ) as ctx:
        assert ctx.config.server_connector.addresses == ("10.3.3.3:8091",)
        assert ctx.config.server_connector.token == "t"
        assert ctx.config.consumer.service_refresh_interval == 1.0
        assert ctx.config.consumer.persist_dir == str(clean_env)
    with SDKContext.create(Configuration(), **{"global.api.timeout": "2s"}) as ctx:
        assert ctx.config.api.timeout == 2.0
        assert ctx.config.server_connector.addresses == ("127.0.0.1:8091",)


class Recorder:
    def __init__(self, name: str, log: list[str], ctx: SDKContext | None = None) -> None:
        self.name = name
        self.log = log
        self.ctx = ctx

    def close(self) -> None:
        # Components close while the scheduler still runs, so they may use it.
        if self.ctx is not None:
            assert not self.ctx.scheduler.closed
            assert not self.ctx.connector.closed
            self.ctx.scheduler.submit(lambda: None).result(5)
        self.log.append(self.name)


def test_components_are_created_once_and_closed_newest_first(no_thread_leak: None) -> None:
    log: list[str] = []
    ctx = SDKContext(Configuration())
    first = ctx.component("a", lambda: Recorder("a", log, ctx))
    assert ctx.component("a", lambda: Recorder("other", log)) is first
    ctx.component("b", lambda: Recorder("b", log, ctx))
    ctx.component("c", lambda: "no close method")
    ctx.close()
    assert log == ["b", "a"]
    assert ctx.scheduler.closed and ctx.connector.closed
    ctx.close()  # idempotent
    assert log == ["b", "a"]
    with pytest.raises(ClosedError):
        ctx.component("d", lambda: Recorder("d", log))


def test_component_factory_runs_once_under_concurrency(no_thread_leak: None) -> None:
    calls = 0
    start = threading.Barrier(8)

    def factory() -> object:
        nonlocal calls
        calls += 1
        return object()

    results: list[object] = []

    def worker() -> None:
        start.wait(5)
        results.append(ctx.component("shared", factory))

    with SDKContext(Configuration()) as ctx:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    assert calls == 1
    assert len(results) == 8 and len({id(r) for r in results}) == 1


def test_a_failing_component_close_is_logged_and_the_rest_close(
    no_thread_leak: None, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    class Broken:
        def close(self) -> None:
            raise RuntimeError("cannot close")

    ctx = SDKContext(Configuration())
    ctx.component("first", lambda: Recorder("first", log))
    ctx.component("broken", Broken)
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.context"):
        ctx.close()
    assert log == ["first"]
    assert "broken" in caplog.text
    assert ctx.scheduler.closed and ctx.connector.closed


def test_close_leaves_no_thread_after_work(no_thread_leak: None) -> None:
    ctx = SDKContext(Configuration())
    done = threading.Event()
    ctx.scheduler.call_later(0, done.set)
    assert done.wait(5)
    ctx.close()


def test_repr_names_addresses_not_the_token() -> None:
    ctx = SDKContext(Configuration().replace(token="hidden-token"))
    try:
        assert "127.0.0.1:8091" in repr(ctx)
        assert "hidden-token" not in repr(ctx)
    finally:
        ctx.close()
