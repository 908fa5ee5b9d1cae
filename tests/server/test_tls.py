"""TLS on both listeners: round trips with a trusted CA, refusals without it.

Certificates are made per session by tests/tlsutil.py (the openssl tool;
skipped without it). Clients verify the server against the test CA with
hostname checking on, as the SDK does.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.apiserver.http import HttpOptions
from tests.server.helpers import CALL_TIMEOUT, discover, discover_request, instance
from tests.server.httputil import HTTP_TIMEOUT, code_of, post
from tests.support import wait_until
from tests.tlsutil import TlsFiles, make_tls_files, tls_files

__all__ = ["tls_files"]  # the session fixture, used below

ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tls_server(no_thread_leak: None, tls_files: TlsFiles) -> Iterator[PolarisServer]:
    options = HttpOptions(io_timeout=1.0, header_timeout=1.0)
    with PolarisServer(
        tls_cert=tls_files.server_cert, tls_key=tls_files.server_key, http_options=options
    ) as running:
        yield running


def grpc_channel(server: PolarisServer, ca: Path) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(
        server.grpc_address, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def https_client(server: PolarisServer, ca: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca))
    return httpx.Client(
        base_url=server.http_address, verify=context, timeout=HTTP_TIMEOUT, trust_env=False
    )


def test_grpc_round_trip_over_tls(tls_server: PolarisServer, tls_files: TlsFiles) -> None:
    with grpc_channel(tls_server, tls_files.ca_cert) as channel:
        stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)
        registered = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        listed = discover(stub, discover_request())
    assert registered.code.value == code_pb2.ExecuteSuccess
    assert [i.id.value for i in listed.instances] == [registered.instance.id.value]


def test_http_round_trip_over_tls(tls_server: PolarisServer, tls_files: TlsFiles) -> None:
    assert tls_server.tls and tls_server.http_address.startswith("https://127.0.0.1:")
    with https_client(tls_server, tls_files.ca_cert) as client:
        assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
        body = {"type": "INSTANCE", "service": {"namespace": "default", "name": "echo"}}
        answer = post(client, "Discover", body).json()
    assert [i["host"] for i in answer["instances"]] == ["10.0.0.1"]


def test_clients_trusting_another_ca_are_refused(tls_server: PolarisServer, tmp_path: Path) -> None:
    stranger = make_tls_files(tmp_path / "other")
    with grpc_channel(tls_server, stranger.ca_cert) as channel:
        stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with https_client(tls_server, stranger.ca_cert) as client, pytest.raises(httpx.ConnectError):
        post(client, "RegisterInstance", ECHO)
    assert tls_server.naming.store.list_services("default") == []


def test_plaintext_clients_get_nothing(tls_server: PolarisServer) -> None:
    with grpc.insecure_channel(tls_server.grpc_address) as channel:
        stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    plain = tls_server.http_address.replace("https://", "http://")
    with (
        httpx.Client(base_url=plain, timeout=HTTP_TIMEOUT, trust_env=False) as client,
        pytest.raises(httpx.TransportError),
    ):
        post(client, "RegisterInstance", ECHO)
    assert tls_server.naming.store.list_services("default") == []


def test_a_stalled_handshake_is_dropped_and_does_not_hold_stop(
    tls_server: PolarisServer, tls_files: TlsFiles
) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=10) as stalled:
        # Never says hello: the handshake is given up after header_timeout.
        assert closes(stalled)
        with https_client(tls_server, tls_files.ca_cert) as client:
            assert code_of(post(client, "RegisterInstance", ECHO)) == 200000


def test_stop_with_a_handshake_pending_returns_and_leaves_no_thread(
    no_thread_leak: None, tls_files: TlsFiles
) -> None:
    # Timeouts far beyond the test's own timeout: only stop() can end the handshake.
    patient = HttpOptions(io_timeout=600, request_timeout=600, header_timeout=600)
    server = PolarisServer(
        tls_cert=tls_files.server_cert, tls_key=tls_files.server_key, http_options=patient
    ).start()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as stalled:
        wait_until(lambda: server.open_http_connections == 1, 5)
        server.stop()
        assert closes(stalled)


def closes(sock: socket.socket) -> bool:
    """Whether the server ends the connection (after, perhaps, a TLS alert) before our timeout."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_bad_certificate_files_fail_start(no_thread_leak: None, tmp_path: Path) -> None:
    missing = PolarisServer(tls_cert=tmp_path / "nope.crt", tls_key=tmp_path / "nope.key")
    with pytest.raises(OSError):
        missing.start()
    assert not missing.running
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(OSError):
        PolarisServer(tls_cert=garbage, tls_key=garbage).start()
    with pytest.raises(ValueError):
        PolarisServer(tls_cert=garbage)


def test_cli_needs_both_tls_files() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "polaris_sdk.server", "--tls-cert", "x.pem", "--http-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--tls-key" in done.stderr
