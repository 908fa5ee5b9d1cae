"""SDK configuration: every setting and its default, in one place.

Contract:

* :class:`Configuration` and its sections are frozen dataclasses: a value,
  safe to share between threads. Change one with :meth:`Configuration.replace`
  or :func:`dataclasses.replace`.
* Every value is checked when a section is built; a wrong one raises
  :class:`~polaris_sdk.errors.ConfigError` naming the ``polaris.yaml`` key and
  the expected form, whether it came from code, a file or the environment.
  It quotes the wrong value, except a secret's (the token): neither such an
  error nor a YAML syntax error of the file shows the token.
* :func:`load_config` merges the sources with a fixed precedence::

      explicit arguments  >  POLARIS_* environment  >  polaris.yaml  >  defaults

* ``polaris.yaml`` uses the polaris-go / polaris-java key names (``global.
  serverConnector.addresses``, ``global.api.timeout``, ``consumer.localCache.
  serviceRefreshInterval`` ...). Keys this SDK does not know are logged as a
  warning and ignored, so one file can serve several SDKs. Durations are
  written ``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"`` or as a bare number of
  seconds, from above 0 to one day; ``provider.heartbeatTtl`` takes the same
  forms but must come to whole seconds (1 to 60).
* The token must be printable ASCII without surrounding spaces (it travels
  as a header): a token file's trailing newline is refused when the
  context is created, without showing the token.
* TLS: ``global.serverConnector.trustedCAFile`` / ``certFile`` / ``keyFile``
  are polaris-java's keys; ``tlsEnable`` (a polaris_sdk extension) turns TLS
  on with the system CAs. Paths are only checked for form here; the
  connector reads the files when it is built.

The table :data:`KEYS` lists every key, its section and field, and the
environment variable that sets it; the README repeats it for users.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from polaris_sdk.defaults import DEFAULT_TTL, LB_POLICIES, MAX_TTL
from polaris_sdk.errors import ConfigError

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CONFIG_FILE",
    "ENV_CONFIG_FILE",
    "KEYS",
    "ApiConfig",
    "Configuration",
    "ConsumerConfig",
    "ProviderConfig",
    "SchedulerConfig",
    "ServerConnectorConfig",
    "load_config",
    "parse_duration",
    "parse_whole_seconds",
]

logger = logging.getLogger("polaris_sdk.config")

DEFAULT_ADDRESS: Final = "127.0.0.1:8091"
DEFAULT_CONFIG_FILE: Final = "polaris.yaml"
ENV_CONFIG_FILE: Final = "POLARIS_CONFIG"
PROTOCOLS: Final = ("grpc", "http")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION: Final = 86400.0
"""The longest duration a setting takes, in seconds (one day): deadlines and
intervals beyond it are mistakes, and some (1e10 s) overflow the clocks."""
MAX_DURATION_TEXT: Final = "1 day (86400s)"
_WHOLE_SECONDS_SLACK: Final = 1e-9
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})$")


# ------------------------------------------------------------------ checks


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    """A duration in seconds: above 0 (or 0 itself with ``allow_zero``), at most a day."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero) or value > MAX_DURATION:
        low = ">= 0" if allow_zero else "> 0"
        raise ConfigError(
            key,
            f"expected a duration {low} and <= {MAX_DURATION_TEXT}, such as '500ms' or '2s',"
            f" got {value!r}",
        )


def _count(key: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, f"expected an integer from {low} to {high}, got {value!r}")


def _check_header_value(key: str, value: str) -> None:
    """``value`` can travel as an HTTP header and gRPC metadata; it is never shown."""
    if not (value.isascii() and value.isprintable() and value == value.strip()):
        raise ConfigError(
            key,
            "expected printable ASCII without control characters or surrounding spaces,"
            " as a header value must be (value hidden; a trailing newline from a file"
            " is the usual cause)",
        )


def _check_address(key: str, address: str) -> None:
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match.group(2)) <= 65535:
        raise ConfigError(key, f"expected host:port such as '127.0.0.1:8091', got {address!r}")


# ---------------------------------------------------------------- sections

_TLS_FILES: Final = (
    ("global.serverConnector.trustedCAFile", "trusted_ca_file"),
    ("global.serverConnector.certFile", "cert_file"),
    ("global.serverConnector.keyFile", "key_file"),
)


@dataclass(frozen=True, slots=True)
class ServerConnectorConfig:
    """How to reach the server (``global.serverConnector``)."""

    addresses: tuple[str, ...] = (DEFAULT_ADDRESS,)
    """Server addresses, ``host:port``, in order of preference: the gRPC port
    (8091) with protocol ``grpc``, the HTTP API port (8090) with ``http``."""
    protocol: str = "grpc"
    """``grpc`` (``v1.PolarisGRPC``) or ``http`` (the HTTP client API)."""
    connect_timeout: float = 1.0
    """Seconds to wait for a connection to one address before trying the next."""
    message_timeout: float = 1.0
    """Deadline in seconds of one request attempt. A Discover, whose answer
    grows with the service, may take until the call's deadline; a gRPC
    Discover stream silent for this long is reopened."""
    failback_interval: float = 10.0
    """Seconds an unreachable address is skipped before it is tried again."""
    token: str | None = field(default=None, repr=False)
    """Sent as ``x-polaris-token``; never logged or shown in ``repr``."""
    tls_enable: bool = False
    """Connect with TLS, verifying the server against the system CAs unless
    ``trusted_ca_file`` names others. Naming any TLS file turns TLS on too."""
    trusted_ca_file: str | None = None
    """PEM file of the CAs the server certificate must chain to."""
    cert_file: str | None = None
    """PEM certificate this client presents (mutual TLS); needs ``key_file``."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""

    @property
    def tls(self) -> bool:
        """Whether connections use TLS."""
        return self.tls_enable or any(
            path is not None for path in (self.trusted_ca_file, self.cert_file, self.key_file)
        )

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str) or not isinstance(self.addresses, Iterable):
            raise ConfigError(
                "global.serverConnector.addresses", "expected a list of host:port strings"
            )
        object.__setattr__(self, "addresses", tuple(self.addresses))
        if not self.addresses:
            raise ConfigError("global.serverConnector.addresses", "expected at least one host:port")
        for address in self.addresses:
            _check_address("global.serverConnector.addresses", address)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                "global.serverConnector.protocol",
                f"expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}",
            )
        _positive("global.serverConnector.connectTimeout", self.connect_timeout)
        _positive("global.serverConnector.messageTimeout", self.message_timeout)
        _positive("global.serverConnector.failbackInterval", self.failback_interval)
        if self.token is not None and not isinstance(self.token, str):
            raise ConfigError("global.serverConnector.token", "expected a string")
        if self.token is not None:
            _check_header_value("global.serverConnector.token", self.token)
        if not isinstance(self.tls_enable, bool):
            raise ConfigError("global.serverConnector.tlsEnable", "expected true or false")
        for key, name in _TLS_FILES:
            path = getattr(self, name)
            if path is not None and not isinstance(path, str | os.PathLike):
                raise ConfigError(key, f"expected a file path, got {path!r}")
            if path is not None:
                object.__setattr__(self, name, os.fspath(path))
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(
                "global.serverConnector.certFile",
                "a client certificate needs its key: set certFile and keyFile together",
            )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Limits of one SDK call (``global.api``)."""

    timeout: float = 3.0
    """Overall deadline in seconds of one call, retries and failover included."""
    max_retry_times: int = 3
    """Retries after the first attempt, for retriable failures only."""
    retry_interval: float = 0.2
    """First retry backoff in seconds; it doubles (with jitter) up to 2 s."""

    def __post_init__(self) -> None:
        _positive("global.api.timeout", self.timeout)
        _count("global.api.maxRetryTimes", self.max_retry_times, 0, 100)
        _positive("global.api.retryInterval", self.retry_interval, allow_zero=True)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The context's scheduler (``global.scheduler``, a polaris_sdk extension)."""

    workers: int = 8
    """Threads running timed work (heartbeats, refreshes) so one slow call
    does not hold up the others."""

    def __post_init__(self) -> None:
        _count("global.scheduler.workers", self.workers, 1, 64)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """Consumer cache and load balancing (``consumer``)."""

    service_refresh_interval: float = 2.0
    """Seconds between revision checks of a cached service."""
    refresh_jitter: float = 0.1
    """Fraction of the refresh interval taken off each wait at random, so that
    many caches do not poll in lockstep and a change is still seen within one
    interval (0 disables)."""
    persist_enable: bool = False
    """Back up cached snapshots on disk for a cold start without the server."""
    persist_dir: str | None = None
    push_empty_protection: bool = True
    """Keep the last non-empty snapshot when the server suddenly answers empty."""
    default_lb_policy: str = LB_POLICIES[0]
    circuit_breaker_enable: bool = True
    """Circuit breaking (``consumer.circuitBreaker.enable``, polaris-go's key): off,
    no instance is left out and call results are accepted and ignored."""

    def __post_init__(self) -> None:
        _positive("consumer.localCache.serviceRefreshInterval", self.service_refresh_interval)
        if not isinstance(self.circuit_breaker_enable, bool):
            raise ConfigError("consumer.circuitBreaker.enable", "expected true or false")
        jitter = self.refresh_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise ConfigError(
                "consumer.localCache.refreshJitter",
                f"expected a number from 0 to 1, got {jitter!r}",
            )
        if not isinstance(self.persist_enable, bool):
            raise ConfigError("consumer.localCache.persistEnable", "expected true or false")
        if self.persist_dir is not None and not isinstance(self.persist_dir, str | os.PathLike):
            raise ConfigError("consumer.localCache.persistDir", "expected a directory path")
        if self.persist_dir is not None:
            object.__setattr__(self, "persist_dir", os.fspath(self.persist_dir))
        if not isinstance(self.push_empty_protection, bool):
            raise ConfigError("consumer.localCache.pushEmptyProtection", "expected true or false")
        if self.default_lb_policy not in LB_POLICIES:
            raise ConfigError(
                "consumer.loadbalancer.type",
                f"expected one of {', '.join(LB_POLICIES)}, got {self.default_lb_policy!r}",
            )


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Registration and heartbeats (``provider``)."""

    heartbeat_ttl: int = DEFAULT_TTL
    """TTL in seconds of ``register_instance`` requests that give none; a
    heartbeat is sent every TTL."""
    reregister_max_backoff: float = 60.0
    """Cap of the re-register backoff ``min(ttl * 2^(n-1) + jitter, cap)``."""
    deregister_on_close: bool = True
    """``close()`` deregisters what ``register_instance`` registered."""
    share_instances: bool = True
    """Processes of one host registering the same instance share it: each holds a
    lease on it (:mod:`polaris_sdk.provider.lease`) and ``close()`` deregisters it
    only in the last one."""
    lease_dir: str = ""
    """Where the lease files live; empty: ``$XDG_RUNTIME_DIR/polaris_sdk``, else
    ``polaris_sdk-<uid>`` in the temporary directory."""

    def __post_init__(self) -> None:
        _count("provider.heartbeatTtl", self.heartbeat_ttl, 1, MAX_TTL)
        _positive("provider.reregisterMaxBackoff", self.reregister_max_backoff)
        for key, value in (
            ("provider.deregisterOnClose", self.deregister_on_close),
            ("provider.shareInstances", self.share_instances),
        ):
            if not isinstance(value, bool):
                raise ConfigError(key, "expected true or false")


@dataclass(frozen=True, slots=True)
class Configuration:
    """All settings of an :class:`~polaris_sdk.context.SDKContext`."""

    server_connector: ServerConnectorConfig = field(default_factory=ServerConnectorConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, base: Configuration | None = None
    ) -> Configuration:
        """The settings of a ``polaris.yaml`` on top of ``base`` (the defaults)."""
        return _apply(base or cls(), _read_yaml(Path(path)), str(path))

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: Configuration | None = None, source: str = "mapping"
    ) -> Configuration:
        """The settings of a parsed ``polaris.yaml`` document."""
        return _apply(base or cls(), _flatten(data, source), source)

    def replace(self, **values: Any) -> Configuration:
        """A copy with settings changed, by ``polaris.yaml`` key or shortcut name.

        Shortcuts: ``addresses``, ``token``, ``persist_dir`` (also turns the
        disk backup on), ``refresh_interval``; any other name must be a key of
        :data:`KEYS`, such as ``replace(**{"global.api.timeout": "2s"})``.
        """
        raw: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name == "persist_dir":
                raw["consumer.localCache.persistEnable"] = True
            raw[_SHORTCUTS.get(name, name)] = value
        unknown = [k for k in raw if k not in KEYS]
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting; known: {', '.join(sorted(KEYS))}")
        return _apply(self, raw, "arguments")


# ------------------------------------------------------------------ parsing


def _shown(key: str, value: Any) -> str:
    """``value`` as an error message about ``key`` may quote it: never a secret's."""
    spec = KEYS.get(key)
    if spec is not None and spec.secret:
        return f"a {type(value).__name__} (value hidden)"
    return repr(value)


def parse_duration(key: str, value: Any) -> float:
    """Seconds from ``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"`` or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(
        key, f"expected a duration such as '500ms', '2s' or '1m', got {_shown(key, value)}"
    )


def parse_whole_seconds(key: str, value: Any) -> int:
    """Whole seconds from ``5``, ``"5"``, ``"5s"``, ``"1m"`` or ``"5000ms"``; not ``"1.5s"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    seconds = parse_duration(key, value)
    whole = round(seconds) if math.isfinite(seconds) else None
    if whole is None or abs(seconds - whole) > _WHOLE_SECONDS_SLACK:
        raise ConfigError(
            key, f"expected whole seconds such as 5 or '5s', got {_shown(key, value)}"
        )
    return whole


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(key, f"expected true or false, got {_shown(key, value)}")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ConfigError(key, f"expected an integer, got {_shown(key, value)}")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(key, f"expected a number, got {_shown(key, value)}")


def _as_str(key: str, value: Any) -> str:
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    raise ConfigError(key, f"expected a string, got {_shown(key, value)}")


def _as_addresses(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [item.strip() if isinstance(item, str) else item for item in value]
    else:
        raise ConfigError(key, f"expected a list of host:port, got {_shown(key, value)}")
    items = [item for item in items if item != ""]
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(key, f"expected host:port strings, got {_shown(key, item)}")
        _check_address(key, item)
    return tuple(items)


@dataclass(frozen=True, slots=True)
class _Key:
    section: str
    name: str
    parse: Callable[[str, Any], Any]
    env: str | None = None
    secret: bool = False
    """The value is a credential: an error about it never shows it."""


KEYS: Final[Mapping[str, _Key]] = {
    "global.serverConnector.addresses": _Key(
        "server_connector", "addresses", _as_addresses, "POLARIS_ADDRESSES"
    ),
    "global.serverConnector.protocol": _Key(
        "server_connector", "protocol", _as_str, "POLARIS_PROTOCOL"
    ),
    "global.serverConnector.connectTimeout": _Key(
        "server_connector", "connect_timeout", parse_duration, "POLARIS_CONNECT_TIMEOUT"
    ),
    "global.serverConnector.messageTimeout": _Key(
        "server_connector", "message_timeout", parse_duration, "POLARIS_MESSAGE_TIMEOUT"
    ),
    "global.serverConnector.failbackInterval": _Key(
        "server_connector", "failback_interval", parse_duration
    ),
    "global.serverConnector.token": _Key(
        "server_connector", "token", _as_str, "POLARIS_TOKEN", secret=True
    ),
    "global.serverConnector.tlsEnable": _Key(
        "server_connector", "tls_enable", _as_bool, "POLARIS_TLS_ENABLE"
    ),
    "global.serverConnector.trustedCAFile": _Key(
        "server_connector", "trusted_ca_file", _as_str, "POLARIS_TLS_CA_FILE"
    ),
    "global.serverConnector.certFile": _Key(
        "server_connector", "cert_file", _as_str, "POLARIS_TLS_CERT_FILE"
    ),
    "global.serverConnector.keyFile": _Key(
        "server_connector", "key_file", _as_str, "POLARIS_TLS_KEY_FILE"
    ),
    "global.api.timeout": _Key("api", "timeout", parse_duration, "POLARIS_API_TIMEOUT"),
    "global.api.maxRetryTimes": _Key("api", "max_retry_times", _as_int, "POLARIS_MAX_RETRY_TIMES"),
    "global.api.retryInterval": _Key("api", "retry_interval", parse_duration),
    "global.scheduler.workers": _Key("scheduler", "workers", _as_int),
    "consumer.localCache.serviceRefreshInterval": _Key(
        "consumer", "service_refresh_interval", parse_duration, "POLARIS_REFRESH_INTERVAL"
    ),
    "consumer.localCache.refreshJitter": _Key("consumer", "refresh_jitter", _as_float),
    "consumer.localCache.persistEnable": _Key(
        "consumer", "persist_enable", _as_bool, "POLARIS_PERSIST_ENABLE"
    ),
    "consumer.localCache.persistDir": _Key(
        "consumer", "persist_dir", _as_str, "POLARIS_PERSIST_DIR"
    ),
    "consumer.localCache.pushEmptyProtection": _Key("consumer", "push_empty_protection", _as_bool),
    "consumer.loadbalancer.type": _Key("consumer", "default_lb_policy", _as_str),
    "consumer.circuitBreaker.enable": _Key(
        "consumer", "circuit_breaker_enable", _as_bool, "POLARIS_CIRCUIT_BREAKER_ENABLE"
    ),
    "provider.heartbeatTtl": _Key(
        "provider", "heartbeat_ttl", parse_whole_seconds, "POLARIS_HEARTBEAT_TTL"
    ),
    "provider.reregisterMaxBackoff": _Key("provider", "reregister_max_backoff", parse_duration),
    "provider.deregisterOnClose": _Key(
        "provider", "deregister_on_close", _as_bool, "POLARIS_DEREGISTER_ON_CLOSE"
    ),
    "provider.shareInstances": _Key(
        "provider", "share_instances", _as_bool, "POLARIS_SHARE_INSTANCES"
    ),
    "provider.leaseDir": _Key("provider", "lease_dir", _as_str, "POLARIS_LEASE_DIR"),
}
"""Every ``polaris.yaml`` key: the section and field it sets and its environment variable."""

_SHORTCUTS: Final = {
    "addresses": "global.serverConnector.addresses",
    "token": "global.serverConnector.token",
    "persist_dir": "consumer.localCache.persistDir",
    "refresh_interval": "consumer.localCache.serviceRefreshInterval",
}


def _flatten(data: Any, source: str) -> dict[str, Any]:
    """``{"global": {"api": {"timeout": "1s"}}}`` -> ``{"global.api.timeout": "1s"}``.

    Unknown keys are warned about and dropped; a known key's value is kept raw.
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError("<root>", f"{source}: expected a mapping at the top level")
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[Any, Any]) -> None:
        for raw_name, value in node.items():
            key = f"{prefix}{raw_name}"
            if key in KEYS:
                flat[key] = value
            elif isinstance(value, Mapping) and any(k.startswith(key + ".") for k in KEYS):
                walk(key + ".", value)
            else:
                logger.warning("%s: unknown configuration key %r ignored", source, key)

    walk("", data)
    return flat


def _apply(base: Configuration, raw: Mapping[str, Any], source: str) -> Configuration:
    changes: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        spec = KEYS[key]
        try:
            parsed = spec.parse(key, value)
        except ConfigError as exc:
            raise ConfigError(key, f"{exc.args[0].split(': ', 1)[1]} (from {source})") from None
        changes.setdefault(spec.section, {})[spec.name] = parsed
    sections = {
        name: dataclasses.replace(getattr(base, name), **fields) for name, fields in changes.items()
    }
    return dataclasses.replace(base, **sections)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the quoted line: it may hold the token."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"{what} at line {mark.line + 1}, column {mark.column + 1}"
        return what
    return type(exc).__name__


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the configuration file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {_yaml_problem(exc)}") from None
    return _flatten(data, str(path))


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, spec in KEYS.items():
        if spec.env and environ.get(spec.env, "").strip():
            raw[key] = environ[spec.env]
    # As with the persist_dir argument, naming a directory turns the backup on.
    if "consumer.localCache.persistDir" in raw:
        raw.setdefault("consumer.localCache.persistEnable", True)
    return raw


def load_config(
    config: str | os.PathLike[str] | Configuration | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **explicit: Any,
) -> Configuration:
    """Merge defaults, a file, the environment and explicit settings.

    * ``config`` a :class:`Configuration`: taken as is (it was written in code,
      so it is explicit); only ``explicit`` settings are applied on top.
    * ``config`` a path: that file, then the environment, then ``explicit``.
    * ``config`` None: the file named by ``POLARIS_CONFIG``, else
      ``./polaris.yaml`` if it exists, then the environment, then ``explicit``.

    ``explicit`` takes the names accepted by :meth:`Configuration.replace`;
    None values are ignored.
    """
    env = os.environ if environ is None else environ
    if isinstance(config, Configuration):
        return config.replace(**explicit)
    path: Path | None = None
    if config is not None:
        path = Path(config)
    elif env.get(ENV_CONFIG_FILE, "").strip():
        path = Path(env[ENV_CONFIG_FILE])
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)
    result = Configuration.from_file(path) if path is not None else Configuration()
    result = _apply(result, _from_environment(env), "environment")
    return result.replace(**explicit)
