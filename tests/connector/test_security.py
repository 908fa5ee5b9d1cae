"""TLS and tokens on both transports, against the embedded server over real sockets."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from polaris_sdk import (
    ConfigError,
    Configuration,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    NetworkError,
    ProviderAPI,
    SDKContext,
    ServiceKey,
)
from polaris_sdk.connector import create_connector
from polaris_sdk.errors import AuthError
from polaris_sdk.server import PolarisServer
from tests.connector.servers import TRANSPORTS, address_of, transport_config
from tests.tlsutil import TlsFiles, make_tls_files

ECHO = ServiceKey("default", "echo")
REQ = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=8080)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tls_server(no_thread_leak: None, tls_files: TlsFiles) -> Iterator[PolarisServer]:
    with PolarisServer(
        grpc_port=0, tls_cert=tls_files.server_cert, tls_key=tls_files.server_key
    ) as server:
        yield server


def round_trip(config: object) -> None:
    with SDKContext(config) as ctx:  # type: ignore[arg-type]
        ctx.connector.register_instance(REQ, None)
        snapshot = ctx.connector.discover_instances(ECHO)
        assert snapshot is not None and [i.port for i in snapshot] == [8080]


# -------------------------------------------------------------------- TLS


def test_tls_round_trip_verified_against_the_ca_file(
    tls_server: PolarisServer, tls_files: TlsFiles, transport: str
) -> None:
    assert tls_server.http_address.startswith("https://")
    config = transport_config(
        transport,
        address_of(tls_server, transport),
        **{"global.serverConnector.trustedCAFile": str(tls_files.ca_cert)},
    )
    assert config.server_connector.tls
    round_trip(config)


def test_an_untrusted_server_certificate_is_refused(
    tls_server: PolarisServer, transport: str
) -> None:
    # TLS with the system CAs only: the test CA is not among them.
    config = transport_config(
        transport,
        address_of(tls_server, transport),
        **{"global.serverConnector.tlsEnable": True, "global.api.timeout": "1s"},
    )
    with SDKContext(config) as ctx, pytest.raises(NetworkError):
        ctx.connector.register_instance(REQ, None)
    assert tls_server.naming.store.get_service("default", "echo") is None  # nothing got through


def test_a_certificate_for_another_host_is_refused(
    no_thread_leak: None, tmp_path: Path, transport: str
) -> None:
    other = make_tls_files(tmp_path / "other", hosts=("polaris.example",))
    with PolarisServer(grpc_port=0, tls_cert=other.server_cert, tls_key=other.server_key) as s:
        config = transport_config(
            transport,
            address_of(s, transport),
            **{
                "global.serverConnector.trustedCAFile": str(other.ca_cert),
                "global.api.timeout": "1s",
            },
        )
        with SDKContext(config) as ctx, pytest.raises(NetworkError):
            ctx.connector.register_instance(REQ, None)


def test_plaintext_to_a_tls_server_fails_cleanly(tls_server: PolarisServer, transport: str) -> None:
    config = transport_config(
        transport, address_of(tls_server, transport), **{"global.api.timeout": "1s"}
    )
    with SDKContext(config) as ctx, pytest.raises(NetworkError):
        ctx.connector.register_instance(REQ, None)


@pytest.mark.parametrize(
    ("key", "content"),
    [
        ("global.serverConnector.trustedCAFile", None),
        ("global.serverConnector.trustedCAFile", b"not a certificate"),
        ("global.serverConnector.keyFile", None),
    ],
)
def test_a_bad_tls_file_is_a_config_error_at_start(
    tmp_path: Path, tls_files: TlsFiles, transport: str, key: str, content: bytes | None
) -> None:
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_bytes(content)
    files = {
        "global.serverConnector.trustedCAFile": str(tls_files.ca_cert),
        "global.serverConnector.certFile": str(tls_files.server_cert),
        "global.serverConnector.keyFile": str(tls_files.server_key),
        key: str(path),
    }
    config = transport_config(transport, "127.0.0.1:1", **files)
    with pytest.raises(ConfigError) as info:
        create_connector(config).close()
    assert info.value.key == key
    assert str(path) in str(info.value)


# ----------------------------------------------------------------- tokens


@pytest.fixture
def token_server(no_thread_leak: None) -> Iterator[PolarisServer]:
    tokens = {"all-namespaces-token": None, "other-namespace-token": ["other"]}
    with PolarisServer(grpc_port=0, tokens=tokens) as server:
        yield server


def attempt(server: PolarisServer, transport: str, token: str | None) -> int | None:
    """The 401xxx code a register and a discover with ``token`` get; None when both pass."""
    config = transport_config(transport, address_of(server, transport), token=token)
    with SDKContext(config) as ctx:
        codes = set()
        for call in (
            lambda: ctx.connector.register_instance(REQ, None),
            lambda: ctx.connector.discover_instances(ECHO),
        ):
            try:
                call()
            except AuthError as exc:
                codes.add(exc.code)
        assert len(codes) <= 1, codes
        return codes.pop() if codes else None


def test_tokens_are_checked_on_both_transports(token_server: PolarisServer, transport: str) -> None:
    assert attempt(token_server, transport, "all-namespaces-token") is None
    assert attempt(token_server, transport, None) == 401002  # EmptyAutToken
    assert attempt(token_server, transport, "made-up-token") == 401004  # TokenNotExisted
    assert attempt(token_server, transport, "other-namespace-token") == 401001  # NotAllowed


def test_heartbeats_need_no_token(token_server: PolarisServer, transport: str) -> None:
    assert attempt(token_server, transport, "all-namespaces-token") is None
    config = transport_config(transport, address_of(token_server, transport))
    with SDKContext(config) as ctx:
        ctx.connector.heartbeat(
            InstanceHeartbeatRequest(service="echo", host="127.0.0.1", port=8080)
        )


def test_a_provider_with_a_token_works_and_no_log_line_shows_it(
    token_server: PolarisServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = transport_config(
        transport, address_of(token_server, transport), token="all-namespaces-token"
    )
    with caplog.at_level(logging.DEBUG):
        with ProviderAPI.create(config) as provider:
            iid = provider.register_instance(REQ).instance_id
            snapshot = provider.context.connector.discover_instances(ECHO)
            assert snapshot is not None and [i.id for i in snapshot] == [iid]
        # A denied call logs too: still no token.
        assert attempt(token_server, transport, "made-up-token") == 401004
    assert caplog.records  # the capture saw the SDK's and the server's records
    assert "all-namespaces-token" not in caplog.text
    assert "made-up-token" not in caplog.text


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (401002, "auth token empty"),
        (401004, "token not existed"),
        (401001, "access is not approved"),
    ],
)
def test_a_denied_call_carries_the_real_servers_words(
    token_server: PolarisServer, code: int, message: str
) -> None:
    token = {401002: None, 401004: "made-up-token", 401001: "other-namespace-token"}[code]
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Polaris-Token"] = token
    body = {"namespace": "default", "service": "echo", "host": "127.0.0.1", "port": 8080}
    with httpx.Client(trust_env=False, timeout=10) as client:
        answer = client.post(
            f"{token_server.http_address}/v1/RegisterInstance", json=body, headers=headers
        )
    assert answer.status_code == 401
    assert answer.headers["X-Polaris-Code"] == str(code)
    assert answer.headers["X-Polaris-Message"] == message
    assert answer.json()["info"] == message
    # The SDK's error carries the same words on either transport.
    for transport in TRANSPORTS:
        config = transport_config(transport, address_of(token_server, transport), token=token)
        with SDKContext(config) as ctx, pytest.raises(AuthError) as info:
            ctx.connector.register_instance(REQ, None)
        assert (info.value.code, info.value.info) == (code, message)


# ----------------------------------------------------- the token in config


@pytest.mark.parametrize(
    "document",
    [
        "global:\n  serverConnector:\n    token: 918273645\n",  # a number, not a string
        "global:\n  serverConnector:\n    token: [918273645]\n",
        'global:\n  serverConnector:\n    token: "918273645\n',  # not valid YAML
    ],
)
def test_a_config_error_never_shows_the_token(tmp_path: Path, document: str) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text(document, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Configuration.from_file(path)
    shown = "".join(traceback.format_exception(info.value))
    assert "918273645" not in shown
    assert "token" in str(info.value) or "YAML" in str(info.value)


def test_a_token_of_the_wrong_type_in_code_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Configuration().replace(token=918273645)
    assert info.value.key == "global.serverConnector.token"
    assert "918273645" not in str(info.value)
    assert "expected a string" in str(info.value)
