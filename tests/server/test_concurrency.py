"""Many clients at once: none lost, open streams never starve unary calls, drops stay local.

Bounds are generous deadlines on futures, never timing assertions.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor, wait

import grpc
import grpc.aio
import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk.server import PolarisServer
from tests.server.helpers import (
    CALL_TIMEOUT,
    DiscoverStream,
    discover,
    discover_request,
    instance,
    new_stub,
)

DEADLINE = 60.0


def test_50_threads_registering_20_each_lose_nothing(server: PolarisServer) -> None:
    def register_twenty(worker: int) -> list[int]:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            return [
                stub.RegisterInstance(
                    instance("crowd", host=f"10.1.{worker}.{n}", port=8000 + n),
                    timeout=CALL_TIMEOUT,
                ).code.value
                for n in range(20)
            ]

    with ThreadPoolExecutor(max_workers=50, thread_name_prefix="polaris-test-reg") as pool:
        results = list(pool.map(register_twenty, range(50), timeout=DEADLINE))

    assert all(code == code_pb2.ExecuteSuccess for codes in results for code in codes)
    channel, stub = new_stub(server.grpc_address)
    with channel:
        answer = discover(stub, discover_request("crowd"))
    addresses = {(i.host.value, i.port.value) for i in answer.instances}
    assert len(answer.instances) == 1000
    assert len(addresses) == 1000


async def _open_streams(address: str, count: int, per_channel: int) -> None:
    """Hold ``count`` Discover streams open while other clients register; check both sides."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count // per_channel)
    ]
    try:
        stubs = [grpcapi_pb2_grpc.PolarisGRPCStub(c) for c in channels]
        calls = [stubs[n % len(stubs)].Discover(timeout=DEADLINE) for n in range(count)]
        first = []
        for call in calls:
            await call.write(discover_request("watched"))
            first.append(await call.read())
        assert all(a.code.value == code_pb2.ExecuteSuccess for a in first)

        # Every stream is now open and idle on the server. Other clients register.
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="polaris-test-reg") as pool:

            def register(n: int) -> int:
                channel, stub = new_stub(address)
                with channel:
                    answer = stub.RegisterInstance(
                        instance("watched", host=f"10.2.0.{n}"), timeout=CALL_TIMEOUT
                    )
                    return int(answer.code.value)

            futures = [loop.run_in_executor(pool, register, n) for n in range(40)]
            codes = await asyncio.wait_for(asyncio.gather(*futures), timeout=DEADLINE)
        assert codes == [code_pb2.ExecuteSuccess] * 40

        # Each open stream still answers, and sees the registrations.
        revision = first[0].service.revision.value
        for call in calls:
            await call.write(discover_request("watched", revision=revision))
        again = [await call.read() for call in calls]
        assert {len(a.instances) for a in again} == {41}
        for call in calls:
            await call.done_writing()
    finally:
        for channel in channels:
            await channel.close()


def test_200_open_streams_do_not_block_registrations(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        stub.RegisterInstance(instance("watched", host="10.2.1.1"), timeout=CALL_TIMEOUT)

    asyncio.run(asyncio.wait_for(_open_streams(server.grpc_address, 200, 20), DEADLINE))


def test_a_client_dropping_its_stream_mid_request_does_not_disturb_others(
    server: PolarisServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel, stub = new_stub(server.grpc_address)
    rude_channel, rude_stub = new_stub(server.grpc_address)
    with channel:
        stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        with DiscoverStream(stub) as polite:
            assert polite.ask(discover_request()).code.value == code_pb2.ExecuteSuccess

            # Requests sent, answers never read, then the stream is cancelled ...
            rude = DiscoverStream(rude_stub)
            rude.ask(discover_request())
            for _ in range(5):
                rude.send(discover_request())
            rude.close()
            # ... and another client vanishes with its whole connection.
            vanishing = DiscoverStream(rude_stub)
            vanishing.send(discover_request())
            rude_channel.close()

            after = polite.ask(discover_request())
            registered = stub.RegisterInstance(instance(host="10.0.0.9"), timeout=CALL_TIMEOUT)
            later = polite.ask(discover_request(revision=after.service.revision.value))

    assert after.code.value == code_pb2.ExecuteSuccess
    assert registered.code.value == code_pb2.ExecuteSuccess
    assert len(later.instances) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_many_discover_streams_come_and_go(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

        def churn(n: int) -> int:
            # Alternate: close politely, or cancel with a request still unanswered.
            stream = DiscoverStream(stub, timeout=CALL_TIMEOUT)
            code = int(stream.ask(discover_request()).code.value)
            if n % 2:
                stream.send(discover_request())
            stream.close()
            return code

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="polaris-test-churn") as pool:
            futures = [pool.submit(churn, n) for n in range(100)]
            done, not_done = wait(futures, timeout=DEADLINE)

        assert not not_done
        assert {f.result() for f in done} == {code_pb2.ExecuteSuccess}
        assert discover(stub, discover_request()).code.value == code_pb2.ExecuteSuccess
