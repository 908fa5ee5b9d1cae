"""ProviderAPI against the embedded server, over real sockets."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from polaris_sdk import (
    ClosedError,
    Configuration,
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    NetworkError,
    ProviderAPI,
    SDKContext,
)
from polaris_sdk.errors import HealthCheckDisabledError
from polaris_sdk.provider import RegistrationState, RegistrationStatus
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from polaris_sdk.validation import instance_id
from tests.connector.servers import RecordingAuthorizer, address_of, unused_port
from tests.provider.conftest import listed
from tests.support import wait_until


def echo(port: int = 8080, service: str = "echo", **fields: object) -> InstanceRegisterRequest:
    return InstanceRegisterRequest(service=service, host="127.0.0.1", port=port, **fields)  # type: ignore[arg-type]


def beats(authorizer: RecordingAuthorizer, service: str) -> int:
    return len(authorizer.actions(Action.HEARTBEAT, service))


def test_a_registered_instance_is_listed(provider: ProviderAPI, observer: SDKContext) -> None:
    resp = provider.register_instance(
        echo(protocol="http", version="1.2.0", weight=50, metadata={"env": "prod"}, ttl=5)
    )
    assert resp.instance_id == instance_id("default", "echo", "127.0.0.1", 8080)
    instance = listed(observer)[resp.instance_id]
    assert (instance.protocol, instance.version, instance.weight, instance.ttl) == (
        "http",
        "1.2.0",
        50,
        5,
    )
    # with the labels a server copies in (a real one does too)
    assert dict(instance.metadata) == {"env": "prod", "protocol": "http", "version": "1.2.0"}
    assert instance.healthy


def test_methods_take_keyword_fields(provider: ProviderAPI, observer: SDKContext) -> None:
    resp = provider.register_instance(service="echo", host="127.0.0.1", port=8081, ttl=5)
    provider.heartbeat(service="echo", host="127.0.0.1", port=8081)
    assert resp.instance_id in listed(observer)
    provider.deregister(service="echo", host="127.0.0.1", port=8081)
    assert resp.instance_id not in listed(observer)
    with pytest.raises(TypeError, match="not both"):
        provider.register_instance(echo(), port=1)
    with pytest.raises(TypeError, match="no field"):
        provider.register_instance(service="echo", host="h", port=1, colour="red")


def test_the_default_ttl_is_five_seconds(provider: ProviderAPI, observer: SDKContext) -> None:
    resp = provider.register_instance(echo())
    assert listed(observer)[resp.instance_id].ttl == 5
    status = provider.status(resp.instance_id)
    assert status is not None and status.ttl == 5


def test_heartbeats_keep_it_healthy_beyond_three_ttl(
    provider: ProviderAPI, observer: SDKContext, authorizer: RecordingAuthorizer
) -> None:
    kept = provider.register_instance(echo(service="kept", ttl=1)).instance_id
    # The control: registered once with the same TTL and never beaten.
    provider.register(echo(service="left", ttl=1))
    wait_until(
        lambda: not any(i.healthy for i in listed(observer, "left").values()),
        timeout=15,
        message="the server never marked the silent instance unhealthy",
    )
    # Four beats at TTL 1 span more than 3 x TTL since the registration.
    wait_until(lambda: beats(authorizer, "kept") >= 4, timeout=15)
    assert listed(observer, "kept")[kept].healthy
    status = provider.status(kept)
    assert status is not None
    assert status.state is RegistrationState.REGISTERED
    assert status.last_success is not None


def test_server_restarted_empty_on_the_same_port_reregisters_by_itself(
    server: PolarisServer, config: Configuration, observer: SDKContext
) -> None:
    seen: list[RegistrationStatus] = []
    with ProviderAPI.create(config, on_status=seen.append) as provider:
        iid = provider.register_instance(echo(ttl=1)).instance_id
        addresses = (server.grpc_address, server.http_address)
        server.stop()
        server.clear()
        server.start()
        assert (server.grpc_address, server.http_address) == addresses
        assert iid not in listed(observer)
        wait_until(lambda: iid in listed(observer), timeout=20, interval=0.05)
        wait_until(lambda: (provider.status(iid) or seen[-1]).reregistrations >= 1)
        states = [s.state for s in seen]
        assert RegistrationState.REREGISTERING in states
        wait_until(lambda: seen and seen[-1].state is RegistrationState.REGISTERED)


def test_first_address_dead_registers_and_beats_through_the_second(
    make_config: Callable[..., Configuration], address: str, authorizer: RecordingAuthorizer
) -> None:
    config = make_config(f"127.0.0.1:{unused_port()}", address)
    with ProviderAPI.create(config) as provider:
        provider.register_instance(echo(ttl=1))
        wait_until(lambda: beats(authorizer, "echo") >= 2, timeout=10)


def test_server_down_at_start_gives_a_clear_error(
    no_thread_leak: None, make_config: Callable[..., Configuration]
) -> None:
    config = make_config(f"127.0.0.1:{unused_port()}", **{"global.api.timeout": "1s"})
    outcome: list[BaseException] = []
    with ProviderAPI.create(config) as provider:

        def call() -> None:
            try:
                provider.register_instance(echo())
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        # Every call ends within global.api.timeout, retries included; the
        # second is slack for a loaded machine.
        worker.join(config.api.timeout + 1.0)
        assert not worker.is_alive()
        assert provider.registrations() == []
    assert len(outcome) == 1 and isinstance(outcome[0], NetworkError)


BAD_REGISTRATIONS = [
    ("namespace", {"namespace": ""}),
    ("namespace", {"namespace": "bad namespace"}),
    ("namespace", {"namespace": "n" * 65}),
    ("service", {"service": ""}),
    ("service", {"service": "s" * 129}),
    ("service", {"service": "no spaces"}),
    ("host", {"host": ""}),
    ("host", {"host": "h" * 129}),
    ("port", {"port": -1}),
    ("port", {"port": 65536}),
    ("port", {"port": "80"}),
    ("protocol", {"protocol": "p" * 33}),
    ("version", {"version": "v" * 33}),
    ("logic_set", {"logic_set": "l" * 129}),
    ("weight", {"weight": 65536}),
    ("weight", {"weight": -1}),
    ("metadata", {"metadata": {f"k{i}": "v" for i in range(65)}}),
    ("metadata", {"metadata": {"k" * 129: "v"}}),
    ("metadata", {"metadata": {"k": "v" * 4097}}),
    ("metadata", {"metadata": {"k": 1}}),
    ("ttl", {"ttl": 0}),
    ("ttl", {"ttl": 61}),
    ("ttl", {"ttl": 1.5}),
    ("instance_id", {"instance_id": ""}),
]


@pytest.mark.parametrize(("field", "change"), BAD_REGISTRATIONS)
def test_each_bad_field_is_named_and_nothing_is_sent(
    provider: ProviderAPI, authorizer: RecordingAuthorizer, field: str, change: dict[str, object]
) -> None:
    from polaris_sdk import PolarisError, ValidationError

    fields: dict[str, object] = {"service": "echo", "host": "127.0.0.1", "port": 8080}
    fields.update(change)
    for call in (provider.register_instance, provider.register):
        with pytest.raises(ValidationError) as info:
            call(**fields)
        assert isinstance(info.value, PolarisError)
        assert info.value.field == field
        assert field in str(info.value)
    assert authorizer.calls == []  # the server saw nothing
    assert provider.registrations() == []


BAD_KEYS = [
    ("service", {"service": ""}),
    ("namespace", {"namespace": "bad namespace"}),
    ("host", {"host": ""}),
    ("port", {"port": None}),
    ("port", {"port": 70000}),
    ("instance_id", {"instance_id": ""}),
]


@pytest.mark.parametrize(("field", "change"), BAD_KEYS)
def test_heartbeat_and_deregister_name_the_bad_field(
    provider: ProviderAPI, authorizer: RecordingAuthorizer, field: str, change: dict[str, object]
) -> None:
    from polaris_sdk import ValidationError

    fields: dict[str, object] = {"service": "echo", "host": "127.0.0.1", "port": 8080}
    fields.update(change)
    with pytest.raises(ValidationError) as info:
        provider.heartbeat(InstanceHeartbeatRequest(**fields))  # type: ignore[arg-type]
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        provider.deregister(InstanceDeregisterRequest(**fields))  # type: ignore[arg-type]
    assert info.value.field == field
    assert authorizer.calls == []


def test_close_deregisters_and_leaves_no_thread(
    config: Configuration, observer: SDKContext, no_thread_leak: None
) -> None:
    provider = ProviderAPI.create(config)
    ids = [provider.register_instance(echo(port)).instance_id for port in (1, 2, 3)]
    one_shot = provider.register(echo(4)).instance_id
    assert set(listed(observer)) == {*ids, one_shot}
    provider.close()
    provider.close()  # idempotent
    assert set(listed(observer)) == {one_shot}  # only what register_instance registered
    assert provider.context.closed
    with pytest.raises(ClosedError):
        provider.register_instance(echo(5))


def test_close_can_keep_the_instances_registered(
    make_config: Callable[..., Configuration], address: str, observer: SDKContext
) -> None:
    config = make_config(address, **{"provider.deregisterOnClose": False})
    with ProviderAPI.create(config) as provider:
        iid = provider.register_instance(echo()).instance_id
    assert iid in listed(observer)


def test_deregister_stops_heartbeats_and_none_revives_it(
    provider: ProviderAPI, observer: SDKContext, authorizer: RecordingAuthorizer
) -> None:
    gone = provider.register_instance(echo(service="gone", ttl=1)).instance_id
    provider.register_instance(echo(service="control", ttl=1))
    wait_until(lambda: beats(authorizer, "gone") >= 1, timeout=10)
    provider.deregister(InstanceDeregisterRequest(service="gone", host="127.0.0.1", port=8080))
    after = len(authorizer.actions(service="gone"))
    assert provider.status(gone) is None
    control = beats(authorizer, "control")
    wait_until(lambda: beats(authorizer, "control") >= control + 3, timeout=10)
    assert len(authorizer.actions(service="gone")) == after  # not one request since
    assert listed(observer, "gone") == {}


def test_registering_again_replaces_the_request_without_doubling_beats(
    provider: ProviderAPI, observer: SDKContext
) -> None:
    first = provider.register_instance(echo(metadata={"v": "1"}, ttl=1))
    second = provider.register_instance(echo(metadata={"v": "2"}, ttl=1))
    assert first.instance_id == second.instance_id
    assert provider.context.scheduler.pending == 1
    assert len(provider.registrations()) == 1
    assert dict(listed(observer)[first.instance_id].metadata) == {"v": "2"}


def test_deregister_by_address_finds_an_instance_with_its_own_id(
    provider: ProviderAPI, observer: SDKContext
) -> None:
    provider.register_instance(echo(instance_id="my-own-id"))
    assert "my-own-id" in listed(observer)
    provider.deregister(service="echo", host="127.0.0.1", port=8080)
    assert listed(observer) == {}
    assert provider.registrations() == []


def test_failures_are_visible_in_the_status_and_the_callback(
    no_thread_leak: None, make_config: Callable[..., Configuration], transport: str
) -> None:
    seen: list[RegistrationStatus] = []
    with PolarisServer(grpc_port=0, health_check=False) as server:
        config = make_config(address_of(server, transport))
        with ProviderAPI.create(config, on_status=seen.append) as provider:
            iid = provider.register_instance(echo(ttl=1)).instance_id
            wait_until(lambda: seen, timeout=10)
            status = provider.status(iid)
            assert status is not None
            assert status.state is RegistrationState.FAILING
            assert isinstance(status.last_error, HealthCheckDisabledError)
            assert seen[0].state is RegistrationState.FAILING
            wait_until(lambda: (provider.status(iid) or status).consecutive_failures >= 2)
    assert seen[-1].state is RegistrationState.DEREGISTERED


def test_facades_sharing_a_context(config: Configuration, observer: SDKContext) -> None:
    ctx = SDKContext(config)
    one, two = ProviderAPI(ctx), ProviderAPI(ctx)
    a = one.register_instance(echo(1)).instance_id
    b = two.register_instance(echo(2)).instance_id
    assert [s.instance_id for s in one.registrations()] == [a]
    one.close()
    assert set(listed(observer)) == {b}  # closing one facade leaves the other's
    assert not ctx.closed
    ctx.close()  # the context closes the flow: the rest is deregistered
    assert listed(observer) == {}
    with pytest.raises(ClosedError):
        two.register_instance(echo(3))


def test_a_thousand_instances_through_one_provider_stay_healthy(
    make_config: Callable[..., Configuration],
    address: str,
    observer: SDKContext,
    authorizer: RecordingAuthorizer,
) -> None:
    count, ttl = 1000, 2
    # close() deregisters the thousand within one api.timeout. Over HTTP to a
    # server in this process (one GIL) that is ~1 s on an idle two-core machine;
    # the margin is for a busy one.
    config = make_config(address, **{"global.scheduler.workers": 8, "global.api.timeout": "5s"})
    with ProviderAPI.create(config) as provider:
        for port in range(count):
            provider.register_instance(echo(10000 + port, service="fleet", ttl=ttl))
        # Exactly one timer per instance: a doubled heartbeat chain would keep
        # the count above ``count`` for good; one in flight only dips it.
        wait_until(lambda: provider.context.scheduler.pending == count, timeout=10)
        sdk_threads = [
            t
            for t in threading.enumerate()
            if t.name.startswith("polaris-") and not t.name.startswith("polaris-http")
        ]
        assert len(sdk_threads) < 20  # the server's HTTP workers are not the provider's
        # Four beats each: past 3 x TTL since the last registration.
        wait_until(lambda: beats(authorizer, "fleet") >= 4 * count, timeout=40, interval=0.2)
        instances = listed(observer, "fleet")
        assert len(instances) == count
        unhealthy = [i.port for i in instances.values() if not i.healthy]
        assert unhealthy == []
        assert all(s.state is RegistrationState.REGISTERED for s in provider.registrations())
    assert listed(observer, "fleet") == {}
