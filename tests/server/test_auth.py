"""The token check: who may register, deregister and discover, on gRPC and on HTTP alike.

A server started with tokens answers a missing token 401002 EmptyAutToken,
an unknown one 401004 TokenNotExisted and a token used outside its
namespaces 401001 NotAllowedAccess; heartbeats and client reports need no
token (as on a real server); ``instance.service_token`` and
``service.token`` override the header's token. No token ever reaches a log.
An id naming an instance in another namespace is authorised against that
namespace, and no register can move an instance to another service.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from polarismesh_specification.api.v1.service_manage import request_pb2, service_pb2

from polaris_sdk.server import PolarisServer
from polaris_sdk.server import __main__ as cli
from polaris_sdk.server.auth import (
    TOKENS_ENV,
    Action,
    AllowAll,
    Resource,
    TokenAuthorizer,
    parse_token_specs,
)
from polaris_sdk.server.naming import RequestContext
from tests.server.helpers import CALL_TIMEOUT, new_stub
from tests.server.httputil import code_of, grpc_answer_as_json, http_client, post
from tests.server.test_cli import Cli

ADMIN = "admin-token-0000"
SCOPED = "team-a-token-1111"
UNKNOWN = "nobody-knows-2222"
TOKENS = {ADMIN: None, SCOPED: ["team-a", "shared"]}

DEFAULT_ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
TEAM_ECHO = {**DEFAULT_ECHO, "namespace": "team-a"}


def discover_body(namespace: str, token: str | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {"namespace": namespace, "name": "echo"}
    if token is not None:
        service["token"] = token
    return {"type": "INSTANCE", "service": service}


# ------------------------------------------------------------ the rules


def resource(action: Action, namespace: str = "default", token: str = "") -> Resource:
    return Resource(action=action, namespace=namespace, service="echo", token=token)


@pytest.mark.parametrize("action", [Action.REGISTER, Action.DEREGISTER, Action.DISCOVER])
def test_token_authorizer_codes(action: Action) -> None:
    check = TokenAuthorizer(TOKENS).authorize
    ctx = RequestContext()
    assert check(ctx, resource(action)) == 401002
    assert check(ctx, resource(action, token=UNKNOWN)) == 401004
    assert check(ctx, resource(action, token=SCOPED)) == 401001
    assert check(ctx, resource(action, "team-a", SCOPED)) == 200000
    assert check(ctx, resource(action, "shared", SCOPED)) == 200000
    assert check(ctx, resource(action, "team-b", ADMIN)) == 200000


@pytest.mark.parametrize("action", [Action.HEARTBEAT, Action.REPORT_CLIENT])
def test_heartbeats_and_client_reports_need_no_token(action: Action) -> None:
    check = TokenAuthorizer(TOKENS).authorize
    assert check(RequestContext(), resource(action)) == 200000
    assert check(RequestContext(), resource(action, token=UNKNOWN)) == 200000


def test_token_specs() -> None:
    assert parse_token_specs(["a", "b:ns1,ns2", "b:ns3"]) == {
        "a": None,
        "b": frozenset({"ns1", "ns2", "ns3"}),
    }
    assert parse_token_specs(" a;b:ns1\n c ") == {"a": None, "b": frozenset({"ns1"}), "c": None}
    assert parse_token_specs(["a:ns1", "a"]) == {"a": None}  # everywhere wins
    for bad in (":ns1", "a:", "a:bad namespace!"):
        with pytest.raises(ValueError):
            parse_token_specs([bad])
    with pytest.raises(ValueError):
        TokenAuthorizer([])
    with pytest.raises(ValueError):
        TokenAuthorizer({"a": []})


def test_tokens_never_show_in_a_repr() -> None:
    authorizer = TokenAuthorizer(TOKENS)
    assert ADMIN not in repr(authorizer) and len(authorizer) == 2
    assert ADMIN not in repr(resource(Action.REGISTER, token=ADMIN))
    assert ADMIN not in repr(RequestContext(token=ADMIN))


def test_auth_and_tokens_are_exclusive() -> None:
    with pytest.raises(ValueError):
        PolarisServer(auth=AllowAll(), tokens=TOKENS)


# ------------------------------------------------- over both transports


@pytest.fixture
def secured(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(tokens=TOKENS) as running:
        yield running


class Grpc:
    """Register / deregister / heartbeat / discover over the official stubs, answers as JSON."""

    def __init__(self, server: PolarisServer) -> None:
        self.channel, self.stub = new_stub(server.grpc_address)

    def call(self, method: str, body: dict[str, Any], token: str | None = None) -> int:
        metadata = [("x-polaris-token", token)] if token is not None else []
        if method == "Discover":
            request = json_format.ParseDict(body, request_pb2.DiscoverRequest())
            # One request, then the stream half-closes; its token is the call's metadata.
            call = self.stub.Discover(iter([request]), timeout=CALL_TIMEOUT, metadata=metadata)
            answer = next(call)
        else:
            request = json_format.ParseDict(body, service_pb2.Instance())
            answer = getattr(self.stub, method)(request, timeout=CALL_TIMEOUT, metadata=metadata)
        return int(grpc_answer_as_json(answer)["code"])


class Http:
    def __init__(self, server: PolarisServer) -> None:
        self.client = http_client(server.http_address)

    def call(self, method: str, body: dict[str, Any], token: str | None = None) -> int:
        return code_of(post(self.client, method, body, token))


@pytest.fixture(params=["grpc", "http"])
def transport(request: pytest.FixtureRequest, secured: PolarisServer) -> Iterator[Any]:
    if request.param == "grpc":
        grpc_transport = Grpc(secured)
        with grpc_transport.channel:
            yield grpc_transport
    else:
        http_transport = Http(secured)
        with http_transport.client:
            yield http_transport


def test_writes_and_discovers_need_a_known_token(transport: Any) -> None:
    for method, body in (
        ("RegisterInstance", DEFAULT_ECHO),
        ("DeregisterInstance", DEFAULT_ECHO),
        ("Discover", discover_body("default")),
    ):
        assert transport.call(method, body) == 401002, method
        assert transport.call(method, body, token="") == 401002, method
        assert transport.call(method, body, token=UNKNOWN) == 401004, method


def test_a_scoped_token_acts_only_in_its_namespaces(transport: Any) -> None:
    assert transport.call("RegisterInstance", DEFAULT_ECHO, token=SCOPED) == 401001
    assert transport.call("RegisterInstance", TEAM_ECHO, token=SCOPED) == 200000
    assert transport.call("Discover", discover_body("team-a"), token=SCOPED) == 200000
    assert transport.call("Discover", discover_body("default"), token=SCOPED) == 401001
    assert transport.call("DeregisterInstance", TEAM_ECHO, token=SCOPED) == 200000


def test_an_unscoped_token_acts_everywhere(transport: Any) -> None:
    for body in (DEFAULT_ECHO, TEAM_ECHO):
        assert transport.call("RegisterInstance", body, token=ADMIN) == 200000
        assert transport.call("Discover", discover_body(body["namespace"]), token=ADMIN) == 200000
        assert transport.call("DeregisterInstance", body, token=ADMIN) == 200000


def test_heartbeats_need_no_token(transport: Any) -> None:
    beat = {**DEFAULT_ECHO, "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 5}}}
    assert transport.call("RegisterInstance", beat, token=ADMIN) == 200000
    assert transport.call("Heartbeat", DEFAULT_ECHO) == 200000
    assert transport.call("Heartbeat", DEFAULT_ECHO, token=UNKNOWN) == 200000


def test_the_service_token_overrides_the_header_token(transport: Any) -> None:
    with_good = {**DEFAULT_ECHO, "service_token": ADMIN}
    with_bad = {**DEFAULT_ECHO, "service_token": UNKNOWN}
    assert transport.call("RegisterInstance", with_good) == 200000
    assert transport.call("RegisterInstance", with_good, token=UNKNOWN) == 200000
    assert transport.call("RegisterInstance", with_bad, token=ADMIN) == 401004
    assert transport.call("Discover", discover_body("default", token=ADMIN)) == 200000
    assert transport.call("Discover", discover_body("default", token=UNKNOWN), token=ADMIN) == (
        401004
    )


def test_denied_discovers_are_discover_responses_over_http(secured: PolarisServer) -> None:
    with http_client(secured.http_address) as client:
        response = post(client, "Discover", discover_body("default"))
    assert response.status_code == 401
    assert response.headers["X-Polaris-Code"] == "401002"
    assert response.json()["type"] == "INSTANCE"


def test_no_token_reaches_the_logs(
    secured: PolarisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for transport in (Grpc(secured), Http(secured)):
        for token in (ADMIN, SCOPED, UNKNOWN):
            transport.call("RegisterInstance", {**DEFAULT_ECHO, "service_token": token}, token)
            transport.call("Discover", discover_body("default", token), token)
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert "denied" in logged  # the denials were logged...
    for token in (ADMIN, SCOPED, UNKNOWN):
        assert token not in logged  # ...without their tokens


# -------------------------------------------------------------------- CLI


def test_cli_reads_tokens_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKENS_ENV, "env-token; env-scoped:ns9")
    parser = cli._parser()
    args = parser.parse_args(["--token", "flag-token", "--token", "flag-scoped:ns1,ns2"])
    assert cli._tokens(parser, args) == {
        "flag-token": None,
        "flag-scoped": frozenset({"ns1", "ns2"}),
        "env-token": None,
        "env-scoped": frozenset({"ns9"}),
    }
    monkeypatch.setenv(TOKENS_ENV, "bad:no!such!namespace")
    with pytest.raises(SystemExit) as exited:
        cli._tokens(parser, parser.parse_args([]))
    assert exited.value.code == 2


HTTP_LISTENING = re.compile(r"listening on grpc \S+ and (http://\S+)")


def test_cli_server_checks_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKENS_ENV, "cli-secret-token")
    server = Cli("--grpc-port", "0", "--http-port", "0", "--log-level", "DEBUG")
    try:
        address = server.wait_for(HTTP_LISTENING).group(1)
        with http_client(address) as client:
            assert code_of(post(client, "RegisterInstance", DEFAULT_ECHO)) == 401002
            ok = post(client, "RegisterInstance", DEFAULT_ECHO, "cli-secret-token")
            assert code_of(ok) == 200000
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.finish() == 0
    assert "cli-secret-token" not in "".join(server.output)


# ------------------------------------- ids naming instances elsewhere

VICTIM = {"namespace": "default", "service": "victim", "host": "10.0.0.1", "port": 80}
VICTIM_ID = hashlib.sha1(b"default##victim##10.0.0.1##80").hexdigest()


def victim_instances(server: PolarisServer) -> list[tuple[str, str]]:
    view = server.naming.store.service_instances("default", "victim")
    return [(r.namespace, r.service) for r in view.instances] if view is not None else []


def test_a_scoped_token_cannot_deregister_another_namespaces_instance_by_id(
    transport: Any, secured: PolarisServer
) -> None:
    assert transport.call("RegisterInstance", VICTIM, token=ADMIN) == 200000
    by_id = {"id": VICTIM_ID, "namespace": "team-a", "service": "victim"}
    assert transport.call("DeregisterInstance", by_id, token=SCOPED) == 401001
    assert transport.call("DeregisterInstance", {"id": VICTIM_ID}, token=SCOPED) == 401001
    assert victim_instances(secured) == [("default", "victim")]
    assert transport.call("DeregisterInstance", by_id, token=ADMIN) == 200000
    assert victim_instances(secured) == []


def test_a_register_cannot_move_an_instance_by_its_id(
    transport: Any, secured: PolarisServer
) -> None:
    assert transport.call("RegisterInstance", VICTIM, token=ADMIN) == 200000
    moved = {**VICTIM, "id": VICTIM_ID, "namespace": "team-a"}
    assert transport.call("RegisterInstance", moved, token=SCOPED) == 401001
    assert transport.call("RegisterInstance", moved, token=ADMIN) == 401001
    renamed = {**VICTIM, "id": VICTIM_ID, "service": "other"}
    assert transport.call("RegisterInstance", renamed, token=ADMIN) == 401001
    assert victim_instances(secured) == [("default", "victim")]
    # The same id in its own service and namespace is still an upsert.
    assert transport.call("RegisterInstance", {**VICTIM, "id": VICTIM_ID}, token=ADMIN) == 200000


def test_a_register_cannot_move_an_instance_with_auth_off(server: PolarisServer) -> None:
    with http_client(server.http_address) as client:
        assert code_of(post(client, "RegisterInstance", VICTIM)) == 200000
        moved = {**VICTIM, "id": VICTIM_ID, "namespace": "elsewhere"}
        assert code_of(post(client, "RegisterInstance", moved)) == 401001
    assert victim_instances(server) == [("default", "victim")]


def test_heartbeats_by_id_still_need_no_token(transport: Any) -> None:
    beat = {**VICTIM, "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 5}}}
    assert transport.call("RegisterInstance", beat, token=ADMIN) == 200000
    assert transport.call("Heartbeat", {"id": VICTIM_ID, "namespace": "team-a"}) == 200000
