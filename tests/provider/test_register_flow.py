"""RegisterFlow under stress: stuck listeners, slow calls, closing races, faults in the loop.

Against the embedded server over real sockets; a connector method is wrapped
only to hold one call on the wire, which a real server cannot be made to do
for one instance and not the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_mock import MockerFixture

from polaris_sdk import (
    ClosedError,
    Configuration,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ProviderAPI,
    SDKContext,
)
from polaris_sdk.provider import RegistrationState, RegistrationStatus
from polaris_sdk.provider.core import RegistrationCore
from polaris_sdk.provider.flow import STATUS_DRAIN_TIMEOUT
from polaris_sdk.server.auth import Action
from polaris_sdk.validation import instance_id
from tests.connector.servers import RecordingAuthorizer
from tests.provider.conftest import advance_until, listed
from tests.support import FakeClock, wait_until

HOST = "127.0.0.1"


@pytest.fixture
def transport() -> str:
    """The flow is the same over every transport; the connector tests cover both."""
    return "grpc"


def echo(port: int, service: str = "echo", ttl: int = 1) -> InstanceRegisterRequest:
    return InstanceRegisterRequest(service=service, host=HOST, port=port, ttl=ttl)


def beats(authorizer: RecordingAuthorizer, service: str) -> int:
    return len(authorizer.actions(Action.HEARTBEAT, service))


def grace(config: Configuration) -> float:
    """A liveness bound: one API timeout plus slack for a loaded machine."""
    return config.api.timeout + 3.0


class HeldRegistration:
    """Holds RegisterInstance for one port on the wire until released.

    ``after=True`` holds it after the server has registered the instance
    (the answer is on its way back), otherwise before the request is sent.
    """

    def __init__(self, ctx: SDKContext, mocker: MockerFixture, port: int, after: bool) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        real = ctx.connector.register_instance

        def register(
            req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
        ) -> InstanceRegisterResponse:
            if req.port != port:
                return real(req, ttl, timeout=timeout)
            if not after:
                self.hold()
            resp = real(req, ttl, timeout=timeout)
            if after:
                self.hold()
            return resp

        mocker.patch.object(ctx.connector, "register_instance", side_effect=register)

    def hold(self) -> None:
        self.entered.set()
        self.release.wait(30)


class Call:
    """Runs a call on a thread of its own and keeps its outcome."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(fn, *args), name="test-call", daemon=True
        )
        self._thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.result = fn(*args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@pytest.fixture
def shared(config: Configuration) -> Iterator[SDKContext]:
    with SDKContext(config) as ctx:
        yield ctx


# ------------------------------------------------------------------ listeners


def test_a_stuck_status_listener_delays_neither_heartbeats_nor_close(
    config: Configuration,
    authorizer: RecordingAuthorizer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One scheduler worker: a listener running there would stop every heartbeat.
    config = config.replace(**{"global.scheduler.workers": 1})
    release = threading.Event()
    called = threading.Event()

    def stuck(status: RegistrationStatus) -> None:
        called.set()
        release.wait(30)

    provider = ProviderAPI.create(config, on_status=stuck)
    try:
        provider.register_instance(echo(1, service="dropped"))
        provider.register_instance(echo(2, service="kept"))
        provider.deregister(service="dropped", host=HOST, port=1)  # status: deregistered
        assert called.wait(5)
        before = beats(authorizer, "kept")
        advance_until(clock, lambda: beats(authorizer, "kept") >= before + 2, step=1)
        closer = Call(provider.close)
        with caplog.at_level(logging.WARNING):
            # The drain of the facade, then of the flow: each bounded.
            closer.join(2 * STATUS_DRAIN_TIMEOUT + grace(config))
        assert closer.done.is_set(), "close() waited for a stuck status listener"
        assert closer.error is None
        assert "still busy" in caplog.text or "still inside a callback" in caplog.text
        assert authorizer.actions(Action.DEREGISTER, "kept")
    finally:
        release.set()
        provider.close()


def test_statuses_reach_the_listener_in_order_before_close_returns(
    config: Configuration,
) -> None:
    seen: list[RegistrationStatus] = []
    with ProviderAPI.create(config, on_status=seen.append) as provider:
        first = provider.register_instance(echo(1)).instance_id
        provider.register_instance(echo(2))
        provider.deregister(service="echo", host=HOST, port=1)
    # close() deregistered the second; both final statuses arrived, in order.
    assert [s.state for s in seen] == [RegistrationState.DEREGISTERED] * 2
    assert seen[0].instance_id == first


# --------------------------------------------------------------- id locking


@pytest.mark.sync_only  # holds a call inside the blocking connector
def test_a_call_held_on_the_wire_does_not_block_other_instances(
    provider: ProviderAPI, observer: SDKContext, mocker: MockerFixture
) -> None:
    config = provider.context.config
    held_port = 1
    # The worst case for any lock shared between ids: a second instance
    # whose id lands in the same one of 64 stripes.
    stripe = hash(instance_id("default", "echo", HOST, held_port)) % 64
    other = next(
        p for p in range(2, 10_000) if hash(instance_id("default", "echo", HOST, p)) % 64 == stripe
    )
    held = HeldRegistration(provider.context, mocker, held_port, after=False)
    slow = Call(provider.register_instance, echo(held_port))
    try:
        assert held.entered.wait(5)
        quick = Call(provider.register_instance, echo(other))
        quick.join(grace(config))
        assert quick.done.is_set(), "registering another instance waited for the held one"
        assert quick.error is None
        provider.deregister(service="echo", host=HOST, port=other)
        assert not slow.done.is_set()
    finally:
        held.release.set()
        slow.join(grace(config))
    assert slow.error is None
    assert set(listed(observer)) == {slow.result.instance_id}


def test_a_registration_answered_after_its_facade_closed_is_deregistered(
    shared: SDKContext, observer: SDKContext, mocker: MockerFixture
) -> None:
    provider = ProviderAPI(shared)
    held = HeldRegistration(shared, mocker, 1, after=True)
    late = Call(provider.register_instance, echo(1))
    try:
        assert held.entered.wait(5)
        assert len(listed(observer)) == 1  # the server has it
        provider.close()
    finally:
        held.release.set()
        late.join(grace(shared.config))
    assert isinstance(late.error, ClosedError)
    assert listed(observer) == {}
    assert shared.scheduler.pending == 0  # nothing heartbeats it
    assert provider.registrations() == []


def test_a_registration_answered_while_the_context_closes_is_deregistered(
    config: Configuration, observer: SDKContext, mocker: MockerFixture
) -> None:
    ctx = SDKContext(config)
    provider = ProviderAPI(ctx)
    held = HeldRegistration(ctx, mocker, 1, after=True)
    late = Call(provider.register_instance, echo(1))
    try:
        assert held.entered.wait(5)
        closer = Call(ctx.close)
        wait_until(lambda: provider._flow.closed, timeout=5)
    finally:
        held.release.set()
        late.join(grace(config))
    closer.join(grace(config))
    assert closer.done.is_set() and closer.error is None
    assert isinstance(late.error, ClosedError)
    # Deregistered before the context let go of its connection.
    assert listed(observer) == {}


def test_the_id_locks_are_dropped_when_unused(provider: ProviderAPI) -> None:
    for port in range(1, 6):
        provider.register_instance(echo(port))
    provider.deregister(service="echo", host=HOST, port=1)
    assert len(provider._flow._id_locks) == 0


# -------------------------------------------------------------- the loop


def test_an_unexpected_error_in_the_loop_is_logged_and_beats_go_on(
    clock: FakeClock,
    provider: ProviderAPI,
    authorizer: RecordingAuthorizer,
    mocker: MockerFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = RegistrationCore.heartbeat_ok
    faults: list[int] = []

    def fails_once(self: RegistrationCore, due: float, now: float) -> object:
        if not faults:
            faults.append(1)
            raise RuntimeError("injected decision fault")
        return real(self, due, now)

    mocker.patch.object(RegistrationCore, "heartbeat_ok", fails_once)
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.provider.heartbeat"):
        iid = provider.register_instance(echo(1)).instance_id
        advance_until(clock, lambda: faults, step=1)
        after_fault = beats(authorizer, "echo")
        advance_until(clock, lambda: beats(authorizer, "echo") >= after_fault + 2, step=1)
    assert "injected decision fault" in caplog.text
    status = provider.status(iid)
    assert status is not None and status.state is RegistrationState.REGISTERED


# ------------------------------------------------------------------ existed


def test_existed_tells_whether_this_sdk_already_had_the_instance(
    provider: ProviderAPI, shared: SDKContext
) -> None:
    assert provider.register_instance(echo(1)).existed is False
    assert provider.register_instance(echo(1)).existed is True
    provider.deregister(service="echo", host=HOST, port=1)
    assert provider.register_instance(echo(1)).existed is False
    # Another context (another process, for the server) did not have it.
    assert ProviderAPI(shared).register_instance(echo(1)).existed is False
