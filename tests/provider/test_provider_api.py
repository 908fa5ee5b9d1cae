"""ProviderAPI against the embedded server, over real sockets."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
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
from polaris_sdk.scheduler import slot_for
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from polaris_sdk.validation import instance_id
from tests.connector.servers import RecordingAuthorizer, address_of, unused_port
from tests.provider.conftest import advance_until, listed
from tests.support import FakeClock, wait_until


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
    server: PolarisServer,
    config: Configuration,
    observer: SDKContext,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
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
        with caplog.at_level(logging.INFO, logger="polaris_sdk.provider"):
            # Two NotFound heartbeats, then the backoff: a few TTLs of fake time.
            advance_until(clock, lambda: iid in listed(observer), step=1)
            wait_until(lambda: (provider.status(iid) or seen[-1]).reregistrations >= 1)
        states = [s.state for s in seen]
        assert RegistrationState.REREGISTERING in states
        wait_until(lambda: seen and seen[-1].state is RegistrationState.REGISTERED)
    # The recovery is logged at the level of the failure it ends.
    failed = [r.levelno for r in caplog.records if "registering again" in r.getMessage()]
    recovered = [r.levelno for r in caplog.records if r.getMessage().startswith("re-registered")]
    assert failed and set(failed) == {logging.WARNING}
    assert recovered and set(recovered) == {logging.WARNING}


def test_first_address_dead_registers_and_beats_through_the_second(
    make_config: Callable[..., Configuration],
    address: str,
    authorizer: RecordingAuthorizer,
    clock: FakeClock,
) -> None:
    config = make_config(f"127.0.0.1:{unused_port()}", address)
    with ProviderAPI.create(config) as provider:
        provider.register_instance(echo(ttl=1))
        advance_until(clock, lambda: beats(authorizer, "echo") >= 2, step=1)


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


TEXT_FIELDS = (
    "namespace",
    "service",
    "host",
    "protocol",
    "version",
    "logic_set",
    "region",
    "zone",
    "campus",
    "vpc_id",
    "instance_id",
    "service_token",
)
FLAG_FIELDS = ("healthy", "isolate", "enable_health_check")

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
    ("instance_id", {"instance_id": "i" * 129}),
    ("vpc_id", {"vpc_id": "v" * 65}),
    ("region", {"region": "r" * 129}),
    ("zone", {"zone": "z" * 129}),
    ("campus", {"campus": "c" * 129}),
    ("service_token", {"service_token": "t" * 2049}),
    ("priority", {"priority": -1}),
    ("priority", {"priority": 128}),
    ("priority", {"priority": 2**40}),
    ("priority", {"priority": "1"}),
    ("priority", {"priority": True}),
    ("port", {"port": True}),
    ("port", {"port": 80.0}),
    ("weight", {"weight": True}),
    ("weight", {"weight": "abc"}),
    ("ttl", {"ttl": True}),
    ("ttl", {"ttl": "5"}),
    ("metadata", {"metadata": "ab"}),
    ("metadata", {"metadata": ["a", "b"]}),
    ("metadata", {"metadata": {"k": "\udc80"}}),
    ("metadata", {"metadata": {"\udc80": "v"}}),
    ("metadata", {"metadata": {1: "v"}}),
    ("host", {"host": "\udc80"}),
    ("service", {"service": "\udc80"}),
    # Every text field given something other than a string.
    *((name, {name: 123}) for name in TEXT_FIELDS),
    # Every flag given something other than a bool.
    *((name, {name: value}) for name in FLAG_FIELDS for value in ("yes", 1, 0)),
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
    ("instance_id", {"instance_id": 5}),
    ("instance_id", {"instance_id": "i" * 129}),
    ("host", {"host": 1}),
    ("host", {"host": "\udc80"}),
    ("service", {"service": 5}),
    ("namespace", {"namespace": 5}),
    ("port", {"port": True}),
    ("port", {"port": "80"}),
    ("vpc_id", {"vpc_id": 5}),
    ("service_token", {"service_token": 5}),
    # With an id, the other fields are sent too: still checked for type.
    ("service", {"instance_id": "abc", "service": 5}),
    ("host", {"instance_id": "abc", "host": 1}),
    ("port", {"instance_id": "abc", "port": "80"}),
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


def test_keyword_calls_with_a_wrong_type_name_the_field(
    provider: ProviderAPI, authorizer: RecordingAuthorizer
) -> None:
    from polaris_sdk import ValidationError

    with pytest.raises(ValidationError) as info:
        provider.heartbeat(host=1)
    assert info.value.field == "host"
    with pytest.raises(ValidationError) as info:
        provider.deregister(instance_id=5)
    assert info.value.field == "instance_id"
    with pytest.raises(ValidationError) as info:
        provider.register(service="echo", host="127.0.0.1", port=8080, healthy="yes")
    assert info.value.field == "healthy"
    assert authorizer.calls == []


def test_a_bad_service_token_is_named_but_never_shown(
    provider: ProviderAPI, authorizer: RecordingAuthorizer
) -> None:
    from polaris_sdk import ValidationError

    token = "s3cret-" + "t" * 2048
    with pytest.raises(ValidationError) as info:
        provider.register(service="echo", host="127.0.0.1", port=8080, service_token=token)
    assert info.value.field == "service_token"
    assert "s3cret" not in str(info.value)
    assert authorizer.calls == []


def test_weight_none_gets_the_server_default(provider: ProviderAPI, observer: SDKContext) -> None:
    provider.register(echo(weight=None))
    provider.register(echo(port=8081, weight=0))

    weights = {i.port: i.weight for i in listed(observer).values()}
    assert weights == {8080: 100, 8081: 0}


def test_same_instance_request_is_transient_and_retried(
    provider: ProviderAPI, authorizer: RecordingAuthorizer, observer: SDKContext
) -> None:
    # A real server answers 400208 when one batch window holds the instance twice.
    authorizer.answer_next(400208)
    resp = provider.register(echo())

    assert resp.instance_id in listed(observer)
    assert len(authorizer.actions(Action.REGISTER, "echo")) == 2


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


def test_close_without_deregistering_leaves_the_instances_registered(
    config: Configuration, observer: SDKContext, authorizer: RecordingAuthorizer
) -> None:
    with ProviderAPI.create(config) as provider:
        kept = provider.register_instance(echo(service="kept")).instance_id
        other = ProviderAPI(provider.context)
        other.register_instance(echo(service="kept", port=8081))
        other.close(deregister=False)
        provider.close(deregister=False)
        provider.close()  # idempotent: the first close decided
    assert Action.DEREGISTER not in [r.action for r in authorizer.actions(service="kept")]
    assert len(listed(observer, "kept")) == 2 and kept in listed(observer, "kept")


def test_deregister_stops_heartbeats_and_none_revives_it(
    clock: FakeClock, provider: ProviderAPI, observer: SDKContext, authorizer: RecordingAuthorizer
) -> None:
    gone = provider.register_instance(echo(service="gone", ttl=1)).instance_id
    provider.register_instance(echo(service="control", ttl=1))
    advance_until(clock, lambda: beats(authorizer, "gone") >= 1, step=1)
    provider.deregister(InstanceDeregisterRequest(service="gone", host="127.0.0.1", port=8080))
    after = len(authorizer.actions(service="gone"))
    assert provider.status(gone) is None
    control = beats(authorizer, "control")
    # Three TTLs on: a timer of the deregistered instance would have fired.
    advance_until(clock, lambda: beats(authorizer, "control") >= control + 3, step=1)
    assert len(authorizer.actions(service="gone")) == after  # not one request since
    assert listed(observer, "gone") == {}


def test_registering_again_replaces_the_request_without_doubling_beats(
    clock: FakeClock, provider: ProviderAPI, observer: SDKContext, authorizer: RecordingAuthorizer
) -> None:
    first = provider.register_instance(echo(metadata={"v": "1"}, ttl=1))
    second = provider.register_instance(echo(metadata={"v": "2"}, ttl=1))
    assert first.instance_id == second.instance_id
    # Time stands still, so no beat is in flight: one timer, the new chain's.
    assert provider.context.scheduler.pending == 1
    for n in range(1, 4):
        clock.advance(1)
        wait_until(lambda n=n: beats(authorizer, "echo") >= n)
    wait_until(lambda: provider.context.scheduler.pending == 1)
    assert beats(authorizer, "echo") == 3  # one per TTL, not two
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
    no_thread_leak: None,
    make_config: Callable[..., Configuration],
    transport: str,
    clock: FakeClock,
) -> None:
    seen: list[RegistrationStatus] = []
    with PolarisServer(grpc_port=0, health_check=False) as server:
        config = make_config(address_of(server, transport))
        with ProviderAPI.create(config, on_status=seen.append) as provider:
            iid = provider.register_instance(echo(ttl=1)).instance_id
            advance_until(clock, lambda: seen, step=1)
            status = provider.status(iid)
            assert status is not None
            assert status.state is RegistrationState.FAILING
            assert isinstance(status.last_error, HealthCheckDisabledError)
            assert seen[0].state is RegistrationState.FAILING
            advance_until(
                clock, lambda: (provider.status(iid) or status).consecutive_failures >= 2, step=1
            )
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


def beats_per_service(authorizer: RecordingAuthorizer) -> Counter[str]:
    return Counter(r.service for r in authorizer.actions(Action.HEARTBEAT))


def least_beats(authorizer: RecordingAuthorizer, services: list[str]) -> int:
    counted = beats_per_service(authorizer)
    return min(counted[s] for s in services)


def test_a_thousand_instances_through_one_provider_stay_healthy(
    make_config: Callable[..., Configuration],
    address: str,
    observer: SDKContext,
    authorizer: RecordingAuthorizer,
) -> None:
    # Real time: staying healthy at the server (3 x TTL) is what is tested.
    # Each instance has a service of its own, so the server's record of
    # heartbeats counts them per instance.
    count, ttl = 1000, 3
    fleet = [f"fleet-{n}" for n in range(count)]
    # close() deregisters the thousand within one api.timeout. Over HTTP to a
    # server in this process (one GIL) that is ~1 s on an idle two-core machine;
    # the margin is for one where another job takes a core.
    config = make_config(address, **{"global.scheduler.workers": 8, "global.api.timeout": "10s"})
    with ProviderAPI.create(config) as provider:
        started: dict[str, float] = {}
        for n, service in enumerate(fleet):
            started[service] = time.monotonic()
            provider.register_instance(echo(10000 + n, service=service, ttl=ttl))
        sdk_threads = [
            t
            for t in threading.enumerate()
            if t.name.startswith("polaris-") and not t.name.startswith("polaris-http")
        ]
        assert len(sdk_threads) < 20  # the server's HTTP workers are not the provider's
        # Four beats each: past 3 x TTL since its registration.
        wait_until(lambda: least_beats(authorizer, fleet) >= 4, timeout=90, interval=0.2)
        counted = beats_per_service(authorizer)
        now = time.monotonic()
        # One chain per instance: its k-th beat is due k TTLs after the
        # registration at the earliest (less one scheduler slot, which may run
        # it that much early), however late it runs, so by now no instance can
        # have more. A second chain would double its count.
        early = slot_for(ttl)
        over = {s: counted[s] for s in fleet if counted[s] > (now - started[s] + early) // ttl}
        assert over == {}
        # Listed once each, and healthy.
        health = {s: [i.healthy for i in listed(observer, s).values()] for s in fleet}
        unhealthy = [s for s in fleet if health[s] != [True]]
        assert unhealthy == []
        statuses = provider.registrations()
        assert len(statuses) == count
        assert all(s.state is RegistrationState.REGISTERED for s in statuses)
    # Each deregistered once, and gone from the server (a sample, to keep it quick).
    deregistered = Counter(r.service for r in authorizer.actions(Action.DEREGISTER))
    assert [s for s in fleet if deregistered[s] != 1] == []
    assert [s for s in fleet[::10] if listed(observer, s)] == []
