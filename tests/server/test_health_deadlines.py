"""The health checker on an injected clock: deadlines, beats, re-registrations, sweeps."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pytest_mock import MockerFixture

from polaris_sdk import wire
from polaris_sdk.server.healthcheck import HealthChecker, HeartbeatBook
from polaris_sdk.server.naming import NamingService
from polaris_sdk.server.store.base import InstanceRecord
from polaris_sdk.server.store.memory import MemoryStore
from tests.server.helpers import instance

SWEEP = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.naming = NamingService(self.store, heartbeats=HeartbeatBook(monotonic=self.clock))
        self.checker = HealthChecker(
            self.store, self.naming.heartbeats, self.naming.apply_health, sweep_interval=SWEEP
        )

    def register(self, host: str, ttl: int | None = 1, **fields: Any) -> str:
        msg = wire.Instance.FromString(instance(host=host, ttl=ttl, **fields).SerializeToString())
        answer = self.naming.register_instance(msg)
        assert answer.code.value == wire.Code.ExecuteSuccess
        return str(answer.instance.id.value)

    def beat(self, host: str) -> None:
        msg = wire.Instance.FromString(instance(host=host).SerializeToString())
        assert self.naming.heartbeat(msg).code.value == wire.Code.ExecuteSuccess

    def record(self, instance_id: str) -> InstanceRecord:
        record = self.store.get_instance(instance_id)
        assert record is not None
        return record

    def healthy(self, instance_id: str) -> bool:
        return self.record(instance_id).healthy

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` pass, checking every ``step`` as the running loop would."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.checker.check_once()


@pytest.fixture
def world() -> World:
    w = World()
    w.checker.check_once()  # the first check reads everything (nothing yet)
    return w


def test_a_silent_instance_expires_after_three_ttls_and_not_before(world: World) -> None:
    silent = world.register("10.0.0.1")
    beating = world.register("10.0.0.2")
    for _ in range(5):  # 2.5 s: within 3 x TTL
        world.beat("10.0.0.2")
        world.advance(0.5)
    assert world.healthy(silent) and world.healthy(beating)

    for _ in range(4):
        world.beat("10.0.0.2")
        world.advance(0.5)

    assert not world.healthy(silent)
    assert world.healthy(beating)


def test_checks_between_sweeps_do_not_read_every_instance(
    world: World, mocker: MockerFixture
) -> None:
    for i in range(20):
        world.register(f"10.0.1.{i}", ttl=5)
    every = mocker.spy(world.store, "health_checked_instances")

    world.advance(SWEEP / 2)

    assert every.call_count == 0
    assert not any(world.healthy(r.id) for r in world.store.health_checked_instances())


def test_an_unhealthy_instance_heals_at_the_check_after_a_beat(world: World) -> None:
    iid = world.register("10.0.0.1")
    world.advance(4)
    assert not world.healthy(iid)
    world.advance(5)
    assert not world.healthy(iid)  # nothing heard: stays unhealthy

    world.beat("10.0.0.1")
    world.checker.check_once()

    assert world.healthy(iid)


def test_registered_unhealthy_stays_so_until_it_beats(world: World) -> None:
    iid = world.register("10.0.0.1", healthy={"value": False})
    world.advance(5)
    assert not world.healthy(iid)
    world.beat("10.0.0.1")
    world.checker.check_once()
    assert world.healthy(iid)


def test_a_re_registration_with_a_shorter_ttl_takes_effect(world: World) -> None:
    iid = world.register("10.0.0.1", ttl=60)
    world.advance(1)
    world.register("10.0.0.1", ttl=1)

    world.advance(3.5)

    assert not world.healthy(iid)


def test_a_deregistered_instance_is_let_go(world: World) -> None:
    world.register("10.0.0.1")
    msg = wire.Instance.FromString(instance(host="10.0.0.1").SerializeToString())
    assert world.naming.deregister_instance(msg).code.value == wire.Code.ExecuteSuccess

    world.advance(5)

    assert world.store.health_checked_instances() == []


def test_a_change_behind_the_book_is_seen_by_the_next_sweep(world: World) -> None:
    iid = world.register("10.0.0.1")
    world.advance(4)
    assert not world.healthy(iid)
    # An operator marks it healthy in the store; it never beats again.
    world.store.modify_instance(iid, lambda r: replace(r, healthy=True, revision="r2"))

    world.advance(SWEEP + 5, step=1.0)

    assert not world.healthy(iid)


def test_a_failed_check_reads_everything_at_the_next(world: World, mocker: MockerFixture) -> None:
    iid = world.register("10.0.0.1")
    mocker.patch.object(world.store, "get_instance", side_effect=RuntimeError("disk on fire"))
    with pytest.raises(RuntimeError):
        world.checker.check_once()
    mocker.stopall()

    world.advance(4)

    assert not world.healthy(iid)
