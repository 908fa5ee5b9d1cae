from __future__ import annotations

import pytest

from polaris_sdk.cache.listwatch import (
    MISSING_REVISION,
    GateClosedError,
    ListerWatcher,
    OutageGate,
)
from polaris_sdk.errors import AuthError, NetworkError, ResourceNotFoundError
from polaris_sdk.model import ServiceKey
from tests.cache.fakes import FakeLister
from tests.consumer.helpers import make_instance, make_snapshot

KEY = ServiceKey("default", "echo")


def test_list_sends_no_revision_and_watch_the_held_one() -> None:
    lister = FakeLister()
    snap = make_snapshot(make_instance(1), revision="r1")
    lister.script(KEY, snap, None)
    lw = ListerWatcher(lister)
    assert lw.list(KEY) is snap
    assert lw.watch(KEY, "r1") is None
    assert lister.calls == [(KEY, ""), (KEY, "r1")]


def test_unknown_service_reads_as_an_empty_snapshot() -> None:
    lister = FakeLister()
    lister.script(KEY, ResourceNotFoundError(400202, "not found"))
    lw = ListerWatcher(lister)
    for result in (lw.list(KEY), lw.watch(KEY, "r1")):
        assert result is not None
        assert result.revision == MISSING_REVISION and len(result) == 0


def test_other_errors_propagate() -> None:
    lister = FakeLister()
    lister.script(KEY, AuthError(401000, "no"))
    with pytest.raises(AuthError):
        ListerWatcher(lister).list(KEY)


def test_after_a_network_failure_only_one_probe_goes_out() -> None:
    lister = FakeLister()
    lister.script(KEY, NetworkError("down"))
    lw = ListerWatcher(lister, probe_interval=3600)
    with pytest.raises(NetworkError):
        lw.watch(KEY, "r1")
    assert lw.gate.down
    for _ in range(5):
        with pytest.raises(GateClosedError):
            lw.watch(KEY, "r1")
    assert len(lister.calls) == 1
    # A user's first request is not held back by the gate...
    lister.script(KEY, make_snapshot(revision="r2"))
    assert lw.list(KEY, urgent=True).revision == "r2"
    # ...and its success reopens it for everyone.
    assert not lw.gate.down
    assert lw.watch(KEY, "r2") is not None


def test_gate_lets_one_probe_through_per_interval() -> None:
    gate = OutageGate(probe_interval=0.0)
    assert gate.enter() is False  # healthy: every call goes, none is "the probe"
    gate.failed(False, NetworkError("down"))
    assert gate.enter() is True  # the probe
    with pytest.raises(GateClosedError):
        gate.enter()  # a probe is in flight
    gate.failed(True, NetworkError("still down"))
    assert gate.enter() is True
    gate.succeeded(True)
    assert not gate.down and gate.enter() is False


def test_non_network_failures_do_not_close_the_gate() -> None:
    lister = FakeLister()
    lister.script(KEY, AuthError(401000, "no"))
    lw = ListerWatcher(lister)
    with pytest.raises(AuthError):
        lw.list(KEY)
    assert not lw.gate.down
