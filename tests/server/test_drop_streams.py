"""drop_discover_streams() ends every open stream, whatever each one is doing at that moment.

Each round opens streams in every state a drop can find them in: opened
with nothing sent, idle after an answer, a request sent but its answer not
read, and busy (a client asking back to back, so the drop lands between or
inside a read and a write). One drop must end them all: every client sees
UNAVAILABLE well before its call deadline, and the server forgets them all.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from polarismesh_specification.api.v1.model import code_pb2

from polaris_sdk.server import PolarisServer
from tests.server.helpers import CALL_TIMEOUT, DiscoverStream, discover_request, instance, new_stub
from tests.support import wait_until

ROUNDS = 40
PER_STATE = 3
STATES = ("opened", "idle", "in_flight", "busy")
TOTAL = len(STATES) * PER_STATE
DEADLINE = 20.0  # a stream the drop missed would end with DEADLINE_EXCEEDED instead


def _drain(stream: DiscoverStream) -> grpc.StatusCode:
    """Read answers until the stream ends; its final status."""
    try:
        for _ in stream._answers:
            pass
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _busy(stream: DiscoverStream, outcome: list[Any]) -> None:
    try:
        while True:
            stream.ask(discover_request())
    except grpc.RpcError as err:
        outcome.append(err.code())
    except StopIteration:
        outcome.append(grpc.StatusCode.OK)


def test_every_stream_ends_on_each_drop(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        assert stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT).code.value == (
            code_pb2.ExecuteSuccess
        )
        for round_number in range(ROUNDS):
            streams = {
                state: [DiscoverStream(stub, timeout=DEADLINE) for _ in range(PER_STATE)]
                for state in STATES
            }
            for stream in streams["idle"]:
                stream.ask(discover_request())
            for stream in streams["in_flight"]:
                stream.send(discover_request())
            outcomes: list[Any] = []
            workers = [
                threading.Thread(target=_busy, args=(s, outcomes), name="polaris-test-busy")
                for s in streams["busy"]
            ]
            for worker in workers:
                worker.start()
            wait_until(lambda: server.open_discover_streams == TOTAL, timeout=10)

            assert server.drop_discover_streams() == TOTAL

            for state in ("opened", "idle", "in_flight"):
                for stream in streams[state]:
                    assert _drain(stream) == grpc.StatusCode.UNAVAILABLE, (round_number, state)
            for worker in workers:
                worker.join(DEADLINE)
            assert outcomes == [grpc.StatusCode.UNAVAILABLE] * PER_STATE, round_number
            for group in streams.values():
                for stream in group:
                    stream.close()
            wait_until(lambda: server.open_discover_streams == 0, timeout=10)
        # The server still serves streams after all that.
        with DiscoverStream(stub, timeout=CALL_TIMEOUT) as stream:
            assert stream.ask(discover_request()).code.value == code_pb2.ExecuteSuccess
