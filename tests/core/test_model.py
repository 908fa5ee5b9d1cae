from __future__ import annotations

import dataclasses

import pytest

from polaris_sdk import model, wire
from polaris_sdk.model import (
    Instance,
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    ServiceInstances,
    ServiceKey,
)


def make_instance(**kw: object) -> Instance:
    fields: dict[str, object] = {
        "id": "i1",
        "namespace": "default",
        "service": "echo",
        "host": "10.0.0.5",
        "port": 8080,
    }
    fields.update(kw)
    return Instance(**fields)  # type: ignore[arg-type]


def test_instances_are_immutable_and_hashable() -> None:
    source = {"env": "prod"}
    inst = make_instance(metadata=source)
    source["env"] = "changed"
    assert inst.metadata["env"] == "prod"
    with pytest.raises(TypeError):
        inst.metadata["env"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.port = 1  # type: ignore[misc]
    assert {inst, make_instance(metadata={"env": "prod"})} == {inst}
    assert inst.address == "10.0.0.5:8080"
    assert inst.service_key == ServiceKey("default", "echo")


def test_service_instances_is_a_sequence_snapshot() -> None:
    a, b = make_instance(id="a"), make_instance(id="b")
    snap = ServiceInstances("default", "echo", "rev", [a, b], {"k": "v"})  # type: ignore[arg-type]
    assert list(snap) == [a, b]
    assert len(snap) == 2
    assert snap[1] is b
    assert isinstance(snap.instances, tuple)
    assert snap.metadata == {"k": "v"}
    assert snap.age >= 0
    assert str(snap.service_key) == "default/echo"


def test_register_request_round_trips_through_the_wire() -> None:
    req = InstanceRegisterRequest(
        namespace="ns",
        service="echo",
        host="10.0.0.5",
        port=8080,
        protocol="grpc",
        version="1.2.0",
        weight=50,
        metadata={"env": "prod"},
        isolate=True,
        priority=1,
        logic_set="set1",
        region="r",
        zone="z",
        campus="c",
        vpc_id="vpc",
        instance_id="given",
    )
    msg = model.register_request_to_wire(req, ttl=7)
    again = wire.Instance.FromString(msg.SerializeToString())
    inst = model.instance_from_wire(again)
    assert inst == Instance(
        id="given",
        namespace="ns",
        service="echo",
        host="10.0.0.5",
        port=8080,
        protocol="grpc",
        version="1.2.0",
        weight=50,
        healthy=True,
        isolated=True,
        metadata={"env": "prod"},
        ttl=7,
        priority=1,
        logic_set="set1",
        region="r",
        zone="z",
        campus="c",
        vpc_id="vpc",
    )
    assert again.enable_health_check.value is True
    assert again.health_check.type == 1  # HEARTBEAT


def test_register_without_ttl_or_health_check_sends_no_health_check() -> None:
    req = InstanceRegisterRequest(service="echo", host="h", port=1)
    assert not model.register_request_to_wire(req).HasField("health_check")
    off = InstanceRegisterRequest(service="echo", host="h", port=1, enable_health_check=False)
    assert not model.register_request_to_wire(off, ttl=5).HasField("health_check")


def test_unset_fields_stay_unset_on_the_wire() -> None:
    msg = model.register_request_to_wire(InstanceRegisterRequest(service="e", host="h", port=1))
    for name in ("id", "isolate", "healthy", "protocol", "version", "service_token", "location"):
        assert not msg.HasField(name), name


@pytest.mark.parametrize("cls", [InstanceDeregisterRequest, InstanceHeartbeatRequest])
def test_instance_key_by_fields_or_id(
    cls: type[InstanceDeregisterRequest] | type[InstanceHeartbeatRequest],
) -> None:
    by_fields = model.instance_key_to_wire(cls(service="echo", host="h", port=0))
    assert by_fields.port.value == 0 and by_fields.HasField("port")
    assert not by_fields.HasField("id")
    by_id = model.instance_key_to_wire(cls(instance_id=""))
    assert by_id.HasField("id") and by_id.id.value == ""


def test_service_instances_from_a_discover_response() -> None:
    resp = wire.DiscoverResponse()
    resp.service.name.value = "echo"
    resp.service.namespace.value = "default"
    resp.service.revision.value = "r1"
    resp.service.metadata["owner"] = "team"
    one = resp.instances.add()
    one.id.value = "x"
    one.host.value = "h"
    one.port.value = 1
    one.healthy.value = False
    snap = model.service_instances_from_wire(resp, "default", "echo")
    assert snap.revision == "r1"
    assert snap.metadata == {"owner": "team"}
    (inst,) = snap
    assert (inst.id, inst.namespace, inst.service, inst.healthy, inst.weight) == (
        "x",
        "default",
        "echo",
        False,
        100,
    )


def test_repr_of_requests_never_shows_the_service_token() -> None:
    requests = [
        InstanceRegisterRequest(service="echo", host="h", port=1, service_token="s3cret"),
        InstanceDeregisterRequest(service="echo", host="h", port=1, service_token="s3cret"),
        InstanceHeartbeatRequest(service="echo", host="h", port=1, service_token="s3cret"),
    ]
    for req in requests:
        assert "s3cret" not in repr(req)
        assert "s3cret" not in str(req)
        assert "service='echo'" in repr(req)


def test_weight_none_sends_no_weight() -> None:
    msg = model.register_request_to_wire(
        InstanceRegisterRequest(service="e", host="h", port=1, weight=None)
    )
    assert not msg.HasField("weight")
    msg = model.register_request_to_wire(
        InstanceRegisterRequest(service="e", host="h", port=1, weight=0)
    )
    assert msg.HasField("weight") and msg.weight.value == 0


def test_a_snapshot_stores_equal_strings_and_metadata_maps_once() -> None:
    from polaris_sdk import wire
    from polaris_sdk.model import service_instances_from_wire

    resp = wire.DiscoverResponse()
    for n in range(3):
        inst = resp.instances.add()
        inst.id.value = f"id-{n}"
        inst.host.value = f"10.0.0.{n}"
        inst.port.value = 8080
        inst.protocol.value = "grpc"
        inst.version.value = "1.0"
        inst.metadata.update({"env": "prod", "zone": "z1" if n < 2 else "z2"})
    snap = service_instances_from_wire(resp, "default", "echo")
    a, b, c = snap.instances
    assert a.protocol is b.protocol is c.protocol and a.version is c.version
    assert a.service is snap.service and a.namespace is snap.namespace
    assert a.metadata is b.metadata and a.metadata == {"env": "prod", "zone": "z1"}
    assert c.metadata == {"env": "prod", "zone": "z2"} and c.metadata is not a.metadata
    with pytest.raises(TypeError):
        a.metadata["env"] = "dev"  # type: ignore[index]
