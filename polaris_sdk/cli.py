"""The ``polaris`` console script: look at and operate a Polaris registry from a shell.

    polaris server [--grpc-port 8091 --http-port 8090 ...]   the embedded server
    polaris services [--namespace NS]                        services and counts
    polaris instances SERVICE [--namespace NS]               one service's instances
    polaris watch SERVICE                                    live added/updated/deleted
    polaris register SERVICE HOST PORT [--ttl 5 ...]         register, beat until Ctrl-C
    polaris deregister SERVICE HOST PORT
    polaris isolate SERVICE HOST PORT [--off]

Where to find the server, and with which token and TLS, comes from the SDK's
own configuration (``--config`` / ``$POLARIS_CONFIG`` / ``./polaris.yaml``,
then ``POLARIS_*``, then ``--address`` / ``--token``), so the CLI sees what
an application configured the same way sees. ``register``, ``deregister``
and ``watch`` go through the SDK (:class:`~polaris_sdk.ProviderAPI`,
:class:`~polaris_sdk.ConsumerAPI`) over its protocol; ``services``,
``instances`` and ``isolate`` use the admin API of the server's HTTP port
(``/naming/v1/...``), the same as a real polaris-server serves, at
``--admin-address`` / ``$POLARIS_ADMIN_ADDRESS``, else the configured address
itself with protocol ``http``, else the configured host on port 8090. A
route the server refuses (401, 403, 404) is named with what to do about it.

``--output json`` prints JSON (one object per line for ``watch``). Exit
codes: 0 done, 1 the server refused or could not be reached, 2 bad usage.
Never prints a token. Click, since it is small, has no dependencies and
gives every command its ``--help``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, Final, NoReturn, TypeVar

import click
import httpx

from polaris_sdk.config import Configuration, load_config
from polaris_sdk.errors import PolarisError

__all__ = ["main"]

ADMIN_ENV: Final = "POLARIS_ADMIN_ADDRESS"
DEFAULT_HTTP_PORT: Final = 8090
PAGE: Final = 100
_HEARTBEAT_KEYS: Final = ("last-heartbeat-time", "last-heartbeat-timestamp")
_REFUSALS: Final = {
    401: "the server wants a valid token: set POLARIS_TOKEN or global.serverConnector.token",
    403: "the token may not do this: use one allowed in that namespace",
    404: "no such route on this server: point --admin-address (or POLARIS_ADMIN_ADDRESS)"
    " at its HTTP port (8090), where polaris-server serves the admin API",
}


class Refused(click.ClickException):
    """The server answered with a refusal or could not be reached: exit 1."""

    exit_code = 1


# ----------------------------------------------------------------- settings


class Settings:
    """The SDK configuration plus the CLI's own choices, shared by every command."""

    def __init__(
        self,
        config: Configuration,
        admin_address: str | None,
        output: str,
        timeout: float,
    ) -> None:
        self.config = config
        self.output = output
        self.timeout = timeout
        self._admin_address = admin_address

    @property
    def admin_url(self) -> str:
        """The base URL of the admin API; see the module doc."""
        connector = self.config.server_connector
        scheme = "https" if connector.tls else "http"
        if self._admin_address:
            address = self._admin_address
            return address if "://" in address else f"{scheme}://{address}"
        first = connector.addresses[0]
        if connector.protocol == "http":
            return f"{scheme}://{first}"
        host = first.rsplit(":", 1)[0]
        return f"{scheme}://{host}:{DEFAULT_HTTP_PORT}"

    def http_client(self) -> httpx.Client:
        connector = self.config.server_connector
        verify: Any = True
        if connector.trusted_ca_file:
            verify = connector.trusted_ca_file
        cert = (
            (connector.cert_file, connector.key_file)
            if connector.cert_file and connector.key_file
            else None
        )
        headers = {"X-Polaris-Token": connector.token} if connector.token else {}
        return httpx.Client(
            base_url=self.admin_url,
            headers=headers,
            timeout=self.timeout,
            verify=verify,
            cert=cert,
            trust_env=False,
        )

    def context(self) -> Any:
        from polaris_sdk.context import SDKContext

        return SDKContext.create(self.config)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:  # pragma: no cover - the group always sets it
        raise click.UsageError("no settings")
    return settings


# ---------------------------------------------------------------- admin API


def _refusal(method: str, path: str, response: httpx.Response) -> NoReturn:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("code") if isinstance(body, dict) else None
    info = body.get("info") if isinstance(body, dict) else None
    what = f"{method} {path} answered {response.status_code}"
    if code:
        what += f" ({code} {info})"
    hint = _REFUSALS.get(response.status_code)
    if code in (401002, 401004):  # no token, unknown token
        hint = _REFUSALS[401]
    elif code in (401000, 401001):  # not allowed
        hint = _REFUSALS[403]
    raise Refused(f"{what}: {hint}" if hint else what)


def _call(
    settings: Settings, method: str, path: str, *, params: Any = None, body: Any = None
) -> dict[str, Any]:
    try:
        with settings.http_client() as client:
            response = client.request(method, path, params=params, json=body)
    except httpx.HTTPError as err:
        raise Refused(f"cannot reach the admin API at {settings.admin_url}: {err}") from None
    if response.status_code >= 400:
        _refusal(method, path, response)
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        raise Refused(
            f"{method} {path}: the answer is not JSON; is this a Polaris server?"
        ) from None
    return answer


def _all_pages(settings: Settings, path: str, key: str, params: dict[str, str]) -> list[Any]:
    """Every item of a paged admin query (``amount`` says how many there are)."""
    items: list[Any] = []
    while True:
        page = _call(settings, "GET", path, params={**params, "offset": len(items), "limit": PAGE})
        got = page.get(key) or []
        items.extend(got)
        if not got or len(items) >= int(page.get("amount") or 0):
            return items


# ------------------------------------------------------------------- output


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(
    settings: Settings, data: Any, rows: Sequence[Sequence[Any]], headers: Sequence[str]
) -> None:
    if settings.output == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif rows:
        click.echo(_table(rows, headers))
    else:
        click.echo("(none)")


def _last_heartbeat(metadata: Mapping[str, str]) -> str:
    if metadata.get("last-heartbeat-time"):
        return metadata["last-heartbeat-time"]
    unix = metadata.get("last-heartbeat-timestamp") or metadata.get("internal-lastheartbeat")
    if unix and unix.isdigit():
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(unix)))
    return "-"


def _metadata_text(metadata: Mapping[str, str]) -> str:
    shown = {k: v for k, v in metadata.items() if k not in _HEARTBEAT_KEYS}
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "-"


# ----------------------------------------------------------------- commands

F = TypeVar("F", bound=Callable[..., Any])


def _instance_key(command: F) -> F:
    """SERVICE HOST PORT and --namespace: how the instance commands name an instance."""
    for decorator in reversed(
        (
            click.argument("service"),
            click.argument("host"),
            click.argument("port", type=int),
            click.option("--namespace", "-n", default="default", show_default=True),
        )
    ):
        command = decorator(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="polaris.yaml to read (default: $POLARIS_CONFIG, else ./polaris.yaml if present)",
)
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="server host:port for the SDK (repeatable; default: the configuration's,"
    " else 127.0.0.1:8091)",
)
@click.option(
    "--token", default=None, help="token to send (default: $POLARIS_TOKEN or the configuration's)"
)
@click.option(
    "--admin-address",
    envvar=ADMIN_ENV,
    default=None,
    help=f"[scheme://]host:port of the admin API (${ADMIN_ENV}; default: the configured"
    f" host on port {DEFAULT_HTTP_PORT})",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="how to print results",
)
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="seconds per admin API call"
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    addresses: tuple[str, ...],
    token: str | None,
    admin_address: str | None,
    output: str,
    timeout: float,
) -> None:
    """Look at and operate a Polaris registry (or run an embedded one: polaris server)."""
    if ctx.invoked_subcommand == "server":
        return
    try:
        config = load_config(config_path, addresses=list(addresses) or None, token=token)
    except PolarisError as err:
        raise click.UsageError(str(err)) from None
    ctx.obj = Settings(config, admin_address, output, timeout)


@cli.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def server(args: tuple[str, ...]) -> None:
    """Run the embedded Polaris server (polaris server --help lists its options)."""
    from polaris_sdk.server.__main__ import main as server_main

    sys.exit(server_main(list(args), prog="polaris server"))


@cli.command()
@click.option("--namespace", "-n", default=None, help="only this namespace (default: all)")
@click.pass_context
def services(ctx: click.Context, namespace: str | None) -> None:
    """List services with their instance counts and revisions."""
    settings = _settings(ctx)
    params = {"namespace": namespace} if namespace else {}
    found = _all_pages(settings, "/naming/v1/services", "services", params)
    rows = [
        (
            s.get("namespace"),
            s.get("name"),
            s.get("total_instance_count", 0),
            s.get("healthy_instance_count", 0),
            s.get("revision", ""),
        )
        for s in found
    ]
    _emit(settings, found, rows, ("NAMESPACE", "SERVICE", "INSTANCES", "HEALTHY", "REVISION"))


@cli.command()
@click.argument("service")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.pass_context
def instances(ctx: click.Context, service: str, namespace: str) -> None:
    """List a service's instances: address, health, isolation, weight, metadata, heartbeat."""
    settings = _settings(ctx)
    params = {"namespace": namespace, "service": service}
    found = _all_pages(settings, "/naming/v1/instances", "instances", params)
    rows = [
        (
            i.get("host"),
            i.get("port"),
            "yes" if i.get("healthy") else "NO",
            "yes" if i.get("isolate") else "no",
            i.get("weight"),
            _metadata_text(i.get("metadata") or {}),
            _last_heartbeat(i.get("metadata") or {}),
        )
        for i in found
    ]
    headers = ("HOST", "PORT", "HEALTHY", "ISOLATED", "WEIGHT", "METADATA", "LAST HEARTBEAT")
    _emit(settings, found, rows, headers)


@cli.command()
@_instance_key
@click.option("--off", is_flag=True, help="end the isolation instead")
@click.pass_context
def isolate(
    ctx: click.Context, service: str, host: str, port: int, namespace: str, off: bool
) -> None:
    """Isolate an instance (consumers stop picking it), or end that with --off."""
    settings = _settings(ctx)
    body = [
        {"namespace": namespace, "service": service, "host": host, "port": port, "isolate": not off}
    ]
    answer = _call(settings, "PUT", "/naming/v1/instances", body=body)
    code = int(answer.get("code") or 0)
    if code not in (200000, 200002):
        raise Refused(f"isolate {service} {host}:{port}: {code} {answer.get('info')}")
    state = "not isolated" if off else "isolated"
    if settings.output == "json":
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        click.echo(f"{namespace}/{service} {host}:{port} is {state}")


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (handlers installed for the rest of the run)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _sdk(settings: Settings) -> Any:
    try:
        return settings.context()
    except PolarisError as err:
        raise Refused(str(err)) from None


@cli.command()
@_instance_key
@click.option("--ttl", type=int, default=5, show_default=True, help="heartbeat TTL, seconds")
@click.option("--weight", type=int, default=100, show_default=True)
@click.option("--protocol", default="", help="e.g. http or grpc")
@click.option("--version", "version_", default="", help="the instance's version")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="repeatable")
@click.pass_context
def register(
    ctx: click.Context,
    service: str,
    host: str,
    port: int,
    namespace: str,
    ttl: int,
    weight: int,
    protocol: str,
    version_: str,
    metadata: tuple[str, ...],
) -> None:
    """Register an instance and heartbeat until Ctrl-C or SIGTERM, then deregister it."""
    settings = _settings(ctx)
    pairs = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    from polaris_sdk import ProviderAPI

    stop = _stop_on_signals()
    with _sdk(settings) as sdk, ProviderAPI(sdk) as provider:
        try:
            answer = provider.register_instance(
                namespace=namespace,
                service=service,
                host=host,
                port=port,
                ttl=ttl,
                weight=weight,
                protocol=protocol,
                version=version_,
                metadata=pairs,
            )
        except PolarisError as err:
            raise Refused(f"register {service} {host}:{port}: {err}") from None
        click.echo(
            f"registered {namespace}/{service} {host}:{port} as {answer.instance_id};"
            " heartbeating until Ctrl-C"
        )
        stop.wait()
    click.echo(f"deregistered {namespace}/{service} {host}:{port}")


@cli.command()
@_instance_key
@click.pass_context
def deregister(ctx: click.Context, service: str, host: str, port: int, namespace: str) -> None:
    """Deregister an instance (an unknown one is fine)."""
    settings = _settings(ctx)
    from polaris_sdk import ProviderAPI

    with _sdk(settings) as sdk, ProviderAPI(sdk) as provider:
        try:
            provider.deregister(namespace=namespace, service=service, host=host, port=port)
        except PolarisError as err:
            raise Refused(f"deregister {service} {host}:{port}: {err}") from None
    click.echo(f"deregistered {namespace}/{service} {host}:{port}")


def _describe(instance: Any) -> dict[str, Any]:
    return {
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "healthy": instance.healthy,
        "isolated": instance.isolated,
        "weight": instance.weight,
        "metadata": dict(instance.metadata),
    }


def _line(kind: str, instance: Any, old: Any = None) -> str:
    text = (
        f"{kind} {instance.address} healthy={'yes' if instance.healthy else 'no'}"
        f" isolated={'yes' if instance.isolated else 'no'} weight={instance.weight}"
    )
    if old is not None:
        changes = [
            f"{name} {getattr(old, name)}->{getattr(instance, name)}"
            for name in ("healthy", "isolated", "weight")
            if getattr(old, name) != getattr(instance, name)
        ]
        if dict(old.metadata) != dict(instance.metadata):
            changes.append("metadata")
        if changes:
            text += f" ({', '.join(changes)})"
    return text


def _event_lines(event: Any, as_json: bool) -> Iterator[str]:
    changes = [
        *(("added", i, None) for i in event.added),
        *(("updated", new, old) for old, new in event.updated),
        *(("deleted", i, None) for i in event.deleted),
    ]
    for kind, instance, old in changes:
        if as_json:
            yield json.dumps(
                {"event": kind, "service": event.service, "namespace": event.namespace}
                | {"instance": _describe(instance), "revision": event.revision}
            )
        else:
            yield _line(kind, instance, old)


@cli.command()
@click.argument("service")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.pass_context
def watch(ctx: click.Context, service: str, namespace: str) -> None:
    """Print the service's instances as they are added, updated and deleted, until Ctrl-C."""
    settings = _settings(ctx)
    from polaris_sdk import ConsumerAPI

    as_json = settings.output == "json"
    lock = threading.Lock()

    def listener(event: Any) -> None:
        with lock:
            for line in _event_lines(event, as_json):
                click.echo(line)

    stop = _stop_on_signals()
    with _sdk(settings) as sdk, ConsumerAPI(sdk) as consumer:
        try:
            consumer.watch_service(namespace=namespace, service=service, listeners=[listener])
        except PolarisError as err:
            raise Refused(f"watch {namespace}/{service}: {err}") from None
        stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the exit code (see the module doc)."""
    runner: Callable[..., Any] = cli.main
    try:
        runner(args=list(argv) if argv is not None else None, prog_name="polaris")
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
