"""Registry and KeyedLocks: the I/O-free bookkeeping of registrations."""

from __future__ import annotations

import pytest

from polaris_sdk.errors import ClosedError
from polaris_sdk.model import InstanceRegisterRequest, InstanceRegisterResponse
from polaris_sdk.provider.core import RegistrationCore
from polaris_sdk.provider.registry import KeyedLocks, Registration, Registry
from polaris_sdk.validation import instance_id


class Owner:
    closed = False


def registration(port: int, owner: object = None, iid: str | None = None) -> Registration:
    req = InstanceRegisterRequest(service="echo", host="10.0.0.5", port=port, ttl=5)
    iid = iid or instance_id("default", "echo", "10.0.0.5", port)
    return Registration(RegistrationCore(iid, req, 5), owner, heartbeats=True)


def test_tracked_by_id_and_by_address() -> None:
    registry: Registry[Registration] = Registry()
    own = registration(80, iid="my-own-id")
    assert registry.instance_id_for("default", "echo", "10.0.0.5", 80, "") == instance_id(
        "default", "echo", "10.0.0.5", 80
    )
    assert registry.track(own)
    assert registry.instance_id_for("default", "echo", "10.0.0.5", 80, "") == "my-own-id"
    assert registry.get("my-own-id") is own
    assert own.deregister_req.instance_id == own.heartbeat_req.instance_id == "my-own-id"
    assert registry.untrack("my-own-id") is own
    assert registry.get("my-own-id") is None
    assert registry.instance_id_for("default", "echo", "10.0.0.5", 80, "") != "my-own-id"


def test_forget_only_removes_the_registration_still_tracked() -> None:
    registry: Registry[Registration] = Registry()
    old, new = registration(80), registration(80)
    registry.track(old)
    registry.track(new)  # registered again: replaces the old one
    registry.forget(old)
    assert registry.get(new.instance_id) is new
    registry.forget(new)
    assert registry.owned() == []


def test_a_registration_completed_after_close_is_not_kept() -> None:
    registry: Registry[Registration] = Registry()
    owner = Owner()
    mine, other = registration(1, owner), registration(2)
    assert registry.track(mine) and registry.track(other)
    assert registry.close(owner) == [mine]  # the owner's only; the registry stays open
    owner.closed = True
    assert not registry.track(registration(3, owner))  # its owner has closed
    assert registry.close() == [mine, other]
    assert registry.close() is None  # closed already
    assert not registry.track(registration(4))


def test_register_calls_are_counted_and_refused_once_closed() -> None:
    registry: Registry[Registration] = Registry()
    registry.begin_register()
    registry.begin_register()
    assert registry.registering == 2
    assert registry.end_register() is False
    registry.close()
    with pytest.raises(ClosedError):
        registry.begin_register()
    assert registry.end_register() is True


def test_answer_says_existed_when_this_registry_had_it() -> None:
    resp = InstanceRegisterResponse(instance_id="i", existed=False)
    assert Registry.answer(resp, None).existed is False
    assert Registry.answer(resp, registration(1)).existed is True
    assert Registry.answer(InstanceRegisterResponse("i", existed=True), None).existed is True


def test_keyed_locks_are_made_per_key_and_dropped_when_unused() -> None:
    made: list[object] = []

    def factory() -> object:
        made.append(object())
        return made[-1]

    locks: KeyedLocks[object] = KeyedLocks(factory)
    first = locks.enter("a")
    assert locks.enter("a") is first  # a second caller waits on the same lock
    assert locks.enter("b") is not first
    assert len(locks) == 2
    locks.leave("a")
    locks.leave("b")
    assert len(locks) == 1
    locks.leave("a")
    assert len(locks) == 0
    assert locks.enter("a") is not first  # made again
    assert len(made) == 3
