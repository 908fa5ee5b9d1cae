"""The pytest plugin, exercised the way users run it: pytest in a child process.

Each test writes a small test suite (or takes the shipped example), runs it
with ``python -m pytest`` in a subprocess and checks the outcome. The plugin
is loaded by its ``pytest11`` entry point when the package is installed with
it, else with ``-p polaris_sdk.testing.plugin``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "testing" / "test_my_service.py"
PLUGIN = "polaris_sdk.testing.plugin"
DEADLINE = 120.0


def run_pytest(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    installed = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", PLUGIN]
    python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-q", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *python_path])},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


def assert_passed(result: subprocess.CompletedProcess[str], count: int) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} passed" in result.stdout, result.stdout


def test_the_readme_example_passes(tmp_path: Path) -> None:
    result = run_pytest(EXAMPLE, cwd=tmp_path)

    assert_passed(result, 6)


FIXTURES_SUITE = """
    import sys
    import threading

    import pytest

    from polaris_sdk import ConsumerAPI, ProviderAPI, ResourceNotFoundError

    seen = {}


    def server_threads():
        return [t for t in threading.enumerate() if t.name == "polaris-server"]


    def test_1_nothing_starts_until_a_test_asks():
        assert server_threads() == []
        assert "polaris_sdk.server" not in sys.modules


    def test_2_a_test_changes_everything(polaris_server, polaris_context):
        seen["server"] = polaris_server.server
        seen["address"] = polaris_server.grpc_address
        provider = ProviderAPI(polaris_context)
        provider.register(namespace="default", service="svc", host="10.0.0.1", port=80)
        assert [i.address for i in polaris_server.instances("svc")] == ["10.0.0.1:80"]
        polaris_server.faults.heartbeat_not_found = True
        polaris_server.stop()


    def test_3_the_next_one_gets_the_same_server_clean(polaris_server):
        assert polaris_server.server is seen["server"]
        assert polaris_server.grpc_address == seen["address"]
        assert polaris_server.running
        assert polaris_server.instances("svc") == []
        assert not polaris_server.faults.heartbeat_not_found
        assert len(server_threads()) == 1


    def test_heartbeats_answer_not_found_while_the_fault_is_on(polaris_server, polaris_context):
        provider = ProviderAPI(polaris_context)
        key = dict(namespace="default", service="svc", host="10.0.0.1", port=80)
        provider.register(**key, ttl=5)
        provider.heartbeat(**key)

        polaris_server.faults.heartbeat_not_found = True
        with pytest.raises(ResourceNotFoundError):
            provider.heartbeat(**key)
        polaris_server.faults.heartbeat_not_found = False

        provider.heartbeat(**key)


    def test_restart_keeps_or_wipes(polaris_server, polaris_context):
        provider = ProviderAPI(polaris_context)
        provider.register(namespace="default", service="svc", host="10.0.0.1", port=80)
        port = polaris_server.server.grpc_port

        polaris_server.restart()
        kept = polaris_server.instances("svc")
        polaris_server.restart(keep_data=False)

        assert polaris_server.server.grpc_port == port
        assert [i.port for i in kept] == [80]
        assert polaris_server.instances("svc") == []


    def test_dropped_streams_are_counted_and_lookups_go_on(polaris_server, polaris_context):
        ProviderAPI(polaris_context).register(
            namespace="default", service="svc", host="10.0.0.1", port=80
        )
        consumer = ConsumerAPI(polaris_context)
        consumer.get_all_instances(namespace="default", service="svc")

        assert polaris_server.drop_discover_streams() >= 1
        assert len(consumer.get_all_instances(namespace="default", service="svc")) == 1


    def test_environ_points_an_sdk_here(polaris_server):
        env = polaris_server.environ()
        assert env["POLARIS_ADDRESSES"] == polaris_server.grpc_address
        assert env["POLARIS_PROTOCOL"] == "grpc"
        assert (env["POLARIS_HEARTBEAT_TTL"], env["POLARIS_REFRESH_INTERVAL"]) == ("1", "0.2s")
        assert env["POLARIS_TOKEN"] == ""


    def test_wait_for_instances_says_what_it_found(polaris_server):
        with pytest.raises(AssertionError, match="expected 1 instance"):
            polaris_server.wait_for_instances("svc", timeout=0.1)
"""


def test_fixtures_give_one_clean_server_per_test_with_faults(tmp_path: Path) -> None:
    write(tmp_path, {"test_suite.py": FIXTURES_SUITE})

    result = run_pytest("-p", "no:randomly", "test_suite.py", cwd=tmp_path)

    assert_passed(result, 8)


SQLITE_SUITE = {
    "conftest.py": """
        import pytest


        @pytest.fixture(scope="session")
        def polaris_server_options(tmp_path_factory):
            return {"data_dir": tmp_path_factory.mktemp("polaris")}
        """,
    "test_sqlite.py": """
        from polaris_sdk import ProviderAPI
        from polaris_sdk.server.store import SqliteStore


        def test_restart_reads_the_registrations_back_from_disk(polaris_server, polaris_context):
            store = polaris_server.server.naming.store
            assert isinstance(store, SqliteStore) and store.path.exists()
            ProviderAPI(polaris_context).register(
                namespace="default", service="svc", host="10.0.0.1", port=80
            )

            polaris_server.stop()
            assert store.closed
            polaris_server.start()

            assert [i.port for i in polaris_server.instances("svc")] == [80]


        def test_and_the_next_test_starts_empty(polaris_server):
            assert polaris_server.instances("svc") == []
        """,
}


def test_options_put_the_session_server_on_sqlite(tmp_path: Path) -> None:
    write(tmp_path, SQLITE_SUITE)

    result = run_pytest(cwd=tmp_path)

    assert_passed(result, 2)


ISOLATION_SUITE = {
    "polaris.yaml": """
        global:
          serverConnector:
            addresses: ["192.0.2.1:8091"]
            token: from-the-file
        """,
    "test_isolation.py": """
        import os

        from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext


        def test_the_context_ignores_the_apps_file_and_environment(polaris_server, polaris_context):
            assert os.environ["POLARIS_TOKEN"] == "from-the-shell"
            connector = polaris_context.config.server_connector
            assert connector.addresses == (polaris_server.grpc_address,)
            assert connector.token is None
            assert polaris_context.config.provider.heartbeat_ttl == 1


        def test_environ_covers_every_setting(polaris_server, monkeypatch):
            for key, value in polaris_server.environ().items():
                monkeypatch.setenv(key, value)
            with SDKContext.create() as ctx:  # what the application under test does
                assert ctx.config.server_connector.token is None
                assert ctx.config.consumer.service_refresh_interval == 0.2
                provider = ProviderAPI(ctx)
                provider.register_instance(
                    namespace="default", service="svc", host="10.0.0.1", port=80
                )
                [me] = polaris_server.instances("svc")
                assert me.ttl == 1
                consumer = ConsumerAPI(ctx)
                assert consumer.get_one_instance(namespace="default", service="svc").port == 80
        """,
    "test_from_environment.py": """
        import pytest


        @pytest.fixture
        def polaris_context_options():
            return {"from_environment": True}


        def test_the_environment_is_read_when_asked(polaris_context):
            assert polaris_context.config.server_connector.token == "from-the-shell"
        """,
}


def test_fixtures_are_isolated_from_the_apps_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, ISOLATION_SUITE)
    monkeypatch.setenv("POLARIS_TOKEN", "from-the-shell")
    monkeypatch.setenv("POLARIS_HEARTBEAT_TTL", "30")

    result = run_pytest(cwd=tmp_path)

    assert_passed(result, 3)
