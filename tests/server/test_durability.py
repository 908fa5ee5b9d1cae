"""``kill -9`` during a registration load loses no acknowledged write.

``python -m polaris_sdk.server --data-dir D`` runs in a child process; a few
threads register (and now and then deregister) instances through the
official stubs as fast as it answers, the test SIGKILLs the child in the
middle of that, starts a new one on the same directory and checks that every
registration answered 200000 is there, with its metadata and health check,
and every acknowledged deregistration stayed done. The load is bounded
(at most WRITERS x PER_WRITER registrations).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from polarismesh_specification.api.v1.model import code_pb2

from polaris_sdk.server import PolarisServer
from tests.server.helpers import CALL_TIMEOUT, discover, discover_request, instance, new_stub, s
from tests.server.test_cli import LISTENING, Cli
from tests.support import wait_until

SERVICE = "durable"
WRITERS = 4
PER_WRITER = 150
KILL_AFTER = 150  # acknowledged registrations before the kill
DEREGISTER_EVERY = 10


@dataclass
class Writer:
    """What one load thread sent and what the server acknowledged."""

    index: int
    registered: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> metadata
    deregister_sent: set[str] = field(default_factory=set)
    deregistered: set[str] = field(default_factory=set)
    interrupted: BaseException | None = None
    unexpected: list[int] = field(default_factory=list)  # codes other than 200000

    def run(self, address: str, stop: threading.Event) -> None:
        channel, stub = new_stub(address)
        try:
            for n in range(PER_WRITER):
                if stop.is_set():
                    return
                metadata = {"writer": str(self.index), "seq": str(n)}
                msg = instance(SERVICE, host=f"10.0.{self.index}.1", port=1000 + n, ttl=5)
                msg.metadata.update(metadata)
                answer = stub.RegisterInstance(msg, timeout=CALL_TIMEOUT)
                if answer.code.value != code_pb2.ExecuteSuccess:
                    self.unexpected.append(answer.code.value)
                    continue
                self.registered[answer.instance.id.value] = metadata
                if n % DEREGISTER_EVERY == DEREGISTER_EVERY - 1:
                    victim = next(iter(self.registered.keys() - self.deregister_sent))
                    self.deregister_sent.add(victim)
                    gone = stub.DeregisterInstance(
                        instance(None, None, None, None, id=s(victim)),
                        timeout=CALL_TIMEOUT,
                    )
                    if gone.code.value != code_pb2.ExecuteSuccess:
                        self.unexpected.append(gone.code.value)
                        continue
                    self.deregistered.add(victim)
        except grpc.RpcError as err:
            self.interrupted = err  # the server died under us: expected
        finally:
            channel.close()


def test_kill_9_loses_no_acknowledged_registration(tmp_path: Path, no_thread_leak: None) -> None:
    data_dir = str(tmp_path / "data")
    first = Cli("--data-dir", data_dir, "--grpc-port", "0", "--http-port", "0")
    try:
        address = first.wait_for(LISTENING).group(1)
        writers = [Writer(i) for i in range(WRITERS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=w.run, args=(address, stop), name=f"polaris-test-load-{i}")
            for i, w in enumerate(writers)
        ]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: sum(len(w.registered) for w in writers) >= KILL_AFTER, timeout=60)
            first.process.send_signal(signal.SIGKILL)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=CALL_TIMEOUT * 2)
    finally:
        if first.process.poll() is None:
            first.process.kill()
        first.finish()
    assert first.process.returncode == -signal.SIGKILL
    # The kill came in the middle of the load, not after it.
    assert any(w.interrupted is not None for w in writers)
    assert [w.unexpected for w in writers] == [[]] * WRITERS
    assert sum(len(w.registered) for w in writers) < WRITERS * PER_WRITER

    second = Cli("--data-dir", data_dir, "--grpc-port", "0", "--http-port", "0")
    try:
        channel, stub = new_stub(second.wait_for(LISTENING).group(1))
        with channel:
            answer = discover(stub, discover_request(SERVICE))
        second.process.send_signal(signal.SIGTERM)
    finally:
        code = second.finish()

    assert code == 0
    assert answer.code.value == code_pb2.ExecuteSuccess
    present = {i.id.value: i for i in answer.instances}
    acknowledged = 0
    for writer in writers:
        for iid, metadata in writer.registered.items():
            if iid in writer.deregister_sent:
                continue  # may or may not have been applied when the kill came
            acknowledged += 1
            assert iid in present, f"acknowledged registration {iid} lost"
            assert dict(present[iid].metadata) == metadata
            assert present[iid].health_check.heartbeat.ttl.value == 5
        lost_deregistrations = writer.deregistered & present.keys()
        assert not lost_deregistrations, (
            f"acknowledged deregistrations undone: {lost_deregistrations}"
        )
    assert acknowledged >= KILL_AFTER // 2  # the check above covered a real load


def test_the_cli_refuses_a_data_dir_in_use(tmp_path: Path, no_thread_leak: None) -> None:
    with PolarisServer(data_dir=tmp_path):
        cli = Cli("--data-dir", str(tmp_path), "--grpc-port", "0", "--http-port", "0")
        code = cli.finish()

    assert code == 1
    output = "".join(cli.output)
    assert "cannot start" in output and "in use" in output
    assert "Traceback" not in output
