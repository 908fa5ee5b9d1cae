"""RegisterInstance checks fields in the real server's order, and bounds the fields it
stores unchecked (region, zone, campus, vpc_id, id, priority) by its MySQL columns.

The order is that of ``service/interceptor/paramcheck/instance.go`` and
``service/instance_test.go::TestCheckInstanceFieldLen``: the metadata count,
then every length and range, then the presence of service, namespace, host
and port.
"""

from __future__ import annotations

from typing import Any

import pytest
from polarismesh_specification.api.v1.model import code_pb2, model_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk.server import PolarisServer
from tests.server.helpers import CALL_TIMEOUT, instance, s, u

Stub = grpcapi_pb2_grpc.PolarisGRPCStub

TOO_MANY_METADATA = {f"k{i}": "v" for i in range(65)}


def _long(n: int) -> str:
    return "a" * n


def located(region: str = "", zone: str = "", campus: str = "", **fields: Any) -> Any:
    msg = instance(**fields)
    msg.location.CopyFrom(model_pb2.Location(region=s(region), zone=s(zone), campus=s(campus)))
    return msg


IN_THE_REAL_ORDER = [
    # A length fault wins over a missing port, service, namespace or host.
    (instance(port=None, protocol=s(_long(33))), code_pb2.InvalidInstanceProtocol),
    (instance(port=None, version=s(_long(33))), code_pb2.InvalidInstanceVersion),
    (instance(port=None, logic_set=s(_long(129))), code_pb2.InvalidInstanceLogicSet),
    (instance(port=None, metadata={"k": _long(4097)}), code_pb2.InvalidMetadata),
    (instance(port=None, weight=u(65536)), code_pb2.InvalidParameter),
    (instance(service=None, protocol=s(_long(33))), code_pb2.InvalidInstanceProtocol),
    (instance(host="", version=s(_long(33))), code_pb2.InvalidInstanceVersion),
    (instance(service="bad name!", port=65536), code_pb2.InvalidInstancePort),
    # The metadata count comes before every length.
    (
        instance(service=_long(129), metadata=TOO_MANY_METADATA),
        code_pb2.InvalidMetadata,
    ),
    # Lengths in the server's order: service, namespace, host, protocol, ...
    (
        instance(host=_long(129), protocol=s(_long(33))),
        code_pb2.InvalidInstanceHost,
    ),
    (
        instance(protocol=s(_long(33)), version=s(_long(33))),
        code_pb2.InvalidInstanceProtocol,
    ),
    (
        instance(logic_set=s(_long(129)), metadata={"k": _long(4097)}),
        code_pb2.InvalidInstanceLogicSet,
    ),
]
UNCHECKED_BY_THE_REAL_SERVER = [
    (located(region=_long(129)), code_pb2.InvalidParameter),
    (located(zone=_long(129)), code_pb2.InvalidParameter),
    (located(campus=_long(129)), code_pb2.InvalidParameter),
    (instance(vpc_id=s(_long(65))), code_pb2.InvalidParameter),
    (instance(id=s(_long(129))), code_pb2.InvalidInstanceID),
    (instance(priority=u(128)), code_pb2.InvalidParameter),
]


@pytest.mark.parametrize(("msg", "code"), IN_THE_REAL_ORDER + UNCHECKED_BY_THE_REAL_SERVER)
def test_each_fault_gets_its_code_and_stores_nothing(
    server: PolarisServer, stub: Stub, msg: Any, code: int
) -> None:
    answer = stub.RegisterInstance(msg, timeout=CALL_TIMEOUT)

    assert answer.code.value == code
    assert not server.naming.store.list_services("default")


def test_their_limits_themselves_are_accepted(stub: Stub) -> None:
    msg = located(
        region=_long(128),
        zone=_long(128),
        campus=_long(128),
        vpc_id=s(_long(64)),
        id=s(_long(128)),
        priority=u(127),
    )

    assert stub.RegisterInstance(msg, timeout=CALL_TIMEOUT).code.value == code_pb2.ExecuteSuccess
