"""``v1.PolarisHeartbeatGRPC`` on the client port, over the official stubs.

BatchHeartbeat counts each beat as a heartbeat and answers an empty
``HeartbeatsResponse`` per message whatever the beats got (400202 too), as a
real server does; BatchGetHeartbeat tells each id's last beat, and
BatchDelHeartbeat forgets it (with tokens, only in the namespaces the token
covers).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from polarismesh_specification.api.v1.service_manage import (
    grpcapi_pb2_grpc,
    heartbeat_pb2,
)

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.naming import FORGIVEN_HEARTBEATS
from tests.server.helpers import CALL_TIMEOUT, instance, new_stub

HeartbeatStub = grpcapi_pb2_grpc.PolarisHeartbeatGRPCStub


@pytest.fixture
def beats(channel: grpc.Channel) -> HeartbeatStub:
    return HeartbeatStub(channel)


def registered(stub: grpcapi_pb2_grpc.PolarisGRPCStub, host: str = "10.0.0.1") -> str:
    answer = stub.RegisterInstance(instance(host=host, ttl=5), timeout=CALL_TIMEOUT)
    return str(answer.instance.id.value)


def by_id(*ids: str) -> heartbeat_pb2.HeartbeatsRequest:
    return heartbeat_pb2.HeartbeatsRequest(
        heartbeats=[heartbeat_pb2.InstanceHeartbeat(instanceId=i) for i in ids]
    )


def test_batch_heartbeat_beats_each_instance_and_answers_each_message_empty(
    server: PolarisServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub, beats: HeartbeatStub
) -> None:
    one, two = registered(stub, "10.0.0.1"), registered(stub, "10.0.0.2")
    by_fields = heartbeat_pb2.HeartbeatsRequest(
        heartbeats=[
            heartbeat_pb2.InstanceHeartbeat(
                service="echo", namespace="default", host="10.0.0.2", port=8080
            )
        ]
    )
    requests: queue.Queue[heartbeat_pb2.HeartbeatsRequest | None] = queue.Queue()
    call = beats.BatchHeartbeat(iter(requests.get, None), timeout=CALL_TIMEOUT)
    answers: Iterator[heartbeat_pb2.HeartbeatsResponse] = call
    try:
        requests.put(by_id(one))
        assert next(answers) == heartbeat_pb2.HeartbeatsResponse()
        assert server.naming.heartbeats.last_beat(one) is not None
        assert server.naming.heartbeats.last_beat(two) is None
        requests.put(by_fields)
        assert next(answers) == heartbeat_pb2.HeartbeatsResponse()
        assert server.naming.heartbeats.last_beat(two) is not None
    finally:
        requests.put(None)
    assert list(answers) == []


def test_batch_heartbeat_drops_every_code(beats: HeartbeatStub) -> None:
    unknown = by_id(*["no-such-instance"] * (FORGIVEN_HEARTBEATS + 2))

    answers = list(beats.BatchHeartbeat(iter([unknown, unknown]), timeout=CALL_TIMEOUT))

    assert answers == [heartbeat_pb2.HeartbeatsResponse()] * 2


def test_batch_get_and_del_heartbeat(
    stub: grpcapi_pb2_grpc.PolarisGRPCStub, beats: HeartbeatStub
) -> None:
    iid = registered(stub)
    stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)
    ask = heartbeat_pb2.GetHeartbeatsRequest(instanceIds=[iid, "nobody"])

    before = beats.BatchGetHeartbeat(ask, timeout=CALL_TIMEOUT).records
    deleted = beats.BatchDelHeartbeat(
        heartbeat_pb2.DelHeartbeatsRequest(instanceIds=[iid]), timeout=CALL_TIMEOUT
    )
    after = beats.BatchGetHeartbeat(ask, timeout=CALL_TIMEOUT).records

    assert [(r.instanceId, r.exist) for r in before] == [(iid, True), ("nobody", False)]
    assert before[0].lastHeartbeatSec > 0
    assert deleted.code == 0  # a real server's answer is empty
    assert [(r.instanceId, r.exist, r.lastHeartbeatSec) for r in after] == [
        (iid, False, 0),
        ("nobody", False, 0),
    ]
    # Only the beat is forgotten, not the instance.
    assert stub.Heartbeat(instance(), timeout=CALL_TIMEOUT).code.value == 200000


def test_deleting_heartbeats_needs_a_token_for_the_instances_namespace(
    no_thread_leak: None,
) -> None:
    with PolarisServer(tokens={"admin": None, "team": ["ns1"]}) as server:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            admin = [("x-polaris-token", "admin")]
            answer = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT, metadata=admin)
            iid = answer.instance.id.value
            stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)
            beats = HeartbeatStub(channel)
            delete = heartbeat_pb2.DelHeartbeatsRequest(instanceIds=[iid])

            denied = [
                beats.BatchDelHeartbeat(delete, timeout=CALL_TIMEOUT, metadata=metadata)
                for metadata in ([], [("x-polaris-token", "team")])
            ]
            kept = server.naming.heartbeats.last_beat(iid)
            allowed = beats.BatchDelHeartbeat(delete, timeout=CALL_TIMEOUT, metadata=admin)

    assert [d.code for d in denied] == [401002, 401001]
    assert kept is not None
    assert allowed.code == 0
    assert server.naming.heartbeats.last_beat(iid) is None


def test_health_check_off_answers_empty(no_thread_leak: None) -> None:
    with PolarisServer(health_check=False) as server:
        channel, _ = new_stub(server.grpc_address)
        with channel:
            beats = HeartbeatStub(channel)
            got = beats.BatchGetHeartbeat(
                heartbeat_pb2.GetHeartbeatsRequest(instanceIds=["x"]), timeout=CALL_TIMEOUT
            )
            answers = list(beats.BatchHeartbeat(iter([by_id("x")]), timeout=CALL_TIMEOUT))

    assert not got.records
    assert answers == [heartbeat_pb2.HeartbeatsResponse()]
