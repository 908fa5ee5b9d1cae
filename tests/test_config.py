"""Configuration: defaults, polaris.yaml, environment, explicit values, and errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from polaris_sdk import ConfigError, Configuration, SDKContext
from polaris_sdk.config import (
    KEYS,
    ApiConfig,
    ConsumerConfig,
    ServerConnectorConfig,
    load_config,
    parse_duration,
)

YAML = """
global:
  serverConnector:
    addresses:
      - 10.0.0.1:8091
      - 10.0.0.2:8091
    protocol: grpc
    connectTimeout: 500ms
    messageTimeout: 2s
  api:
    timeout: 1m
    maxRetryTimes: 5
    retryInterval: 100ms
consumer:
  localCache:
    serviceRefreshInterval: 3s
    persistEnable: true
    persistDir: /var/cache/polaris
  loadbalancer:
    type: ringHash
provider:
  heartbeatTtl: 10
  deregisterOnClose: false
"""


@pytest.fixture
def polaris_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "polaris.yaml"
    path.write_text(YAML, encoding="utf-8")
    return path


def test_defaults_live_in_one_place() -> None:
    config = load_config(environ={})
    assert config == Configuration()
    assert config.server_connector.addresses == ("127.0.0.1:8091",)
    assert config.provider.heartbeat_ttl == 5
    assert config.provider.deregister_on_close is True
    assert config.consumer.service_refresh_interval == 2.0
    assert config.consumer.persist_enable is False
    assert config.consumer.persist_dir is None
    assert config.consumer.push_empty_protection is True
    assert config.consumer.default_lb_policy == "weightedRandom"
    assert 0 < config.consumer.refresh_jitter < 1


def test_polaris_yaml_uses_polaris_key_names(polaris_yaml: Path) -> None:
    config = load_config(polaris_yaml, environ={})
    sc = config.server_connector
    assert sc.addresses == ("10.0.0.1:8091", "10.0.0.2:8091")
    assert sc.connect_timeout == 0.5
    assert sc.message_timeout == 2.0
    assert config.api == ApiConfig(timeout=60.0, max_retry_times=5, retry_interval=0.1)
    assert config.consumer.service_refresh_interval == 3.0
    assert config.consumer.persist_enable is True
    assert config.consumer.persist_dir == "/var/cache/polaris"
    assert config.consumer.default_lb_policy == "ringHash"
    assert config.provider.heartbeat_ttl == 10
    assert config.provider.deregister_on_close is False


def test_precedence_explicit_over_environment_over_file(polaris_yaml: Path) -> None:
    env = {"POLARIS_ADDRESSES": "127.0.0.1:1, 127.0.0.1:2", "POLARIS_API_TIMEOUT": "5s"}
    config = load_config(polaris_yaml, environ=env)
    assert config.server_connector.addresses == ("127.0.0.1:1", "127.0.0.1:2")
    assert config.api.timeout == 5.0
    assert config.server_connector.connect_timeout == 0.5  # from the file

    config = load_config(polaris_yaml, environ=env, addresses=["127.0.0.1:3"])
    assert config.server_connector.addresses == ("127.0.0.1:3",)
    assert config.api.timeout == 5.0


def test_no_argument_reads_the_file_in_the_working_directory(
    polaris_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(polaris_yaml.parent)
    assert load_config(environ={}).server_connector.addresses[0] == "10.0.0.1:8091"


def test_polaris_config_names_the_file(polaris_yaml: Path, tmp_path: Path) -> None:
    config = load_config(environ={"POLARIS_CONFIG": str(polaris_yaml)})
    assert config.provider.heartbeat_ttl == 10


def test_a_configuration_object_is_explicit_and_beats_the_environment() -> None:
    given = Configuration(api=ApiConfig(timeout=9.0))
    config = load_config(given, environ={"POLARIS_API_TIMEOUT": "1s"}, token="t")
    assert config.api.timeout == 9.0
    assert config.server_connector.token == "t"


def test_environment_variables(tmp_path: Path) -> None:
    env = {
        "POLARIS_TOKEN": "secret-token",
        "POLARIS_REFRESH_INTERVAL": "250ms",
        "POLARIS_PERSIST_DIR": str(tmp_path),
        "POLARIS_HEARTBEAT_TTL": "3",
        "POLARIS_MAX_RETRY_TIMES": "0",
    }
    config = load_config(environ=env)
    assert config.server_connector.token == "secret-token"
    assert config.consumer.service_refresh_interval == 0.25
    assert config.consumer.persist_dir == str(tmp_path)
    assert config.consumer.persist_enable is True  # naming a directory turns the backup on
    assert config.provider.heartbeat_ttl == 3
    assert config.api.max_retry_times == 0


def test_shortcuts_of_create() -> None:
    config = load_config(
        environ={}, addresses="127.0.0.1:9,127.0.0.1:10", persist_dir="/x", refresh_interval=0.5
    )
    assert config.server_connector.addresses == ("127.0.0.1:9", "127.0.0.1:10")
    assert config.consumer.persist_enable is True
    assert config.consumer.persist_dir == "/x"
    assert config.consumer.service_refresh_interval == 0.5
    config = config.replace(**{"global.api.timeout": "250ms", "provider.heartbeatTtl": 2})
    assert config.api.timeout == 0.25
    assert config.provider.heartbeat_ttl == 2


def test_unknown_keys_are_warned_about_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text(
        "global:\n  serverConnector:\n    addresses: [127.0.0.1:1]\n    bogus: 1\n"
        "  statReporter:\n    enable: true\nconsumer:\n  localCache:\n    type: inmemory\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="polaris_sdk.config"):
        config = load_config(path, environ={})
    assert config.server_connector.addresses == ("127.0.0.1:1",)
    warned = caplog.text
    for key in (
        "global.serverConnector.bogus",
        "global.statReporter",
        "consumer.localCache.type",
    ):
        assert key in warned


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("global.api.timeout", "soon", "duration"),
        ("global.api.timeout", "-1s", "duration"),
        ("global.api.timeout", "0s", "> 0"),
        ("global.serverConnector.connectTimeout", True, "duration"),
        ("global.serverConnector.addresses", "no-port", "host:port"),
        ("global.serverConnector.addresses", "h:99999", "host:port"),
        ("global.serverConnector.addresses", [], "at least one"),
        ("global.serverConnector.protocol", "carrier-pigeon", "grpc"),
        ("global.api.maxRetryTimes", "many", "integer"),
        ("global.api.maxRetryTimes", -1, "integer from 0"),
        ("consumer.localCache.persistEnable", "maybe", "true or false"),
        ("consumer.localCache.refreshJitter", 2, "from 0 to 1"),
        ("consumer.loadbalancer.type", "random", "weightedRandom"),
        ("provider.heartbeatTtl", 61, "from 1 to 60"),
    ],
)
def test_a_wrong_value_names_the_key_and_the_expected_form(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Configuration().replace(**{key: value})
    assert info.value.key == key
    assert expected in str(info.value)


def test_wrong_values_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text("global:\n  api:\n    timeout: fast\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"global\.api\.timeout: .*'500ms'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"addresses: .*\(from environment\)"):
        load_config(environ={"POLARIS_ADDRESSES": "nonsense"})
    path.write_text("global: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_sections_check_values_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"global\.serverConnector\.messageTimeout"):
        ServerConnectorConfig(message_timeout=0)
    with pytest.raises(ConfigError, match=r"consumer\.localCache\.serviceRefreshInterval"):
        ConsumerConfig(service_refresh_interval=-1)
    with pytest.raises(ConfigError, match="unknown setting"):
        Configuration().replace(no_such_setting=1)


def test_the_token_is_not_shown() -> None:
    config = Configuration().replace(token="do-not-print-me")
    assert "do-not-print-me" not in repr(config)


def test_durations() -> None:
    assert parse_duration("k", "500ms") == 0.5
    assert parse_duration("k", "2s") == 2.0
    assert parse_duration("k", "1m") == 60.0
    assert parse_duration("k", "1h") == 3600.0
    assert parse_duration("k", 3) == 3.0
    assert parse_duration("k", "1.5") == 1.5


def test_every_key_sets_a_real_field() -> None:
    config = Configuration()
    for key, spec in KEYS.items():
        assert hasattr(getattr(config, spec.section), spec.name), key


def test_http_protocol_and_tls_keys_from_polaris_yaml(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text(
        "global:\n  serverConnector:\n    addresses: [10.0.0.1:8090]\n    protocol: http\n"
        "    trustedCAFile: /etc/polaris/ca.pem\n    certFile: client.pem\n"
        "    keyFile: client.key\n",
        encoding="utf-8",
    )
    sc = load_config(path, environ={}).server_connector
    assert sc.protocol == "http"
    assert (sc.trusted_ca_file, sc.cert_file, sc.key_file) == (
        "/etc/polaris/ca.pem",
        "client.pem",
        "client.key",
    )
    assert sc.tls and not sc.tls_enable  # naming a CA file is enough


def test_tls_is_off_by_default_and_tls_enable_alone_uses_the_system_cas() -> None:
    assert not Configuration().server_connector.tls
    sc = Configuration().replace(**{"global.serverConnector.tlsEnable": True}).server_connector
    assert sc.tls and sc.trusted_ca_file is None


def test_protocol_and_tls_from_the_environment() -> None:
    env = {
        "POLARIS_PROTOCOL": "http",
        "POLARIS_TLS_ENABLE": "true",
        "POLARIS_TLS_CA_FILE": "ca.pem",
        "POLARIS_TLS_CERT_FILE": "c.pem",
        "POLARIS_TLS_KEY_FILE": "c.key",
    }
    sc = load_config(environ=env).server_connector
    assert (sc.protocol, sc.tls_enable, sc.trusted_ca_file, sc.cert_file, sc.key_file) == (
        "http",
        True,
        "ca.pem",
        "c.pem",
        "c.key",
    )


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ConfigError, match="certFile and keyFile together"):
        Configuration().replace(**{"global.serverConnector.certFile": "c.pem"})
    with pytest.raises(ConfigError) as info:
        ServerConnectorConfig(key_file="c.key")
    assert info.value.key == "global.serverConnector.certFile"
    with pytest.raises(ConfigError, match="tlsEnable"):
        Configuration().replace(**{"global.serverConnector.tlsEnable": "sometimes"})


DURATION_KEYS = [key for key, spec in KEYS.items() if spec.parse is parse_duration]


@pytest.mark.parametrize("key", DURATION_KEYS)
@pytest.mark.parametrize("value", ["1e10", 1e10, "25h", "1e400", "inf", "nan", 86400.5])
def test_every_duration_is_bounded(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Configuration().replace(**{key: value})
    assert info.value.key == key
    assert "86400s" in str(info.value)


@pytest.mark.parametrize("key", DURATION_KEYS)
def test_a_day_is_the_longest_duration(key: str) -> None:
    Configuration().replace(**{key: "24h"})


def test_a_huge_timeout_never_reaches_a_call(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text("global:\n  api:\n    timeout: 1e10\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"global\.api\.timeout: .*86400s"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"global\.api\.timeout: .*86400s"):
        load_config(environ={"POLARIS_API_TIMEOUT": "1e10"})
    with pytest.raises(ConfigError, match=r"global\.api\.timeout: .*86400s"):
        SDKContext.create(**{"global.api.timeout": 1e10})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(2, 2), ("2", 2), ("2s", 2), ("1m", 60), ("3000ms", 3), ("7000ms", 7), (" 10s ", 10)],
)
def test_the_heartbeat_ttl_takes_durations_in_whole_seconds(value: object, seconds: int) -> None:
    config = Configuration().replace(**{"provider.heartbeatTtl": value})
    assert config.provider.heartbeat_ttl == seconds


def test_the_heartbeat_ttl_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text("provider:\n  heartbeatTtl: 2s\n", encoding="utf-8")
    assert load_config(path, environ={}).provider.heartbeat_ttl == 2
    config = load_config(environ={"POLARIS_HEARTBEAT_TTL": "2s"})
    assert config.provider.heartbeat_ttl == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.5s", "whole seconds"),
        ("500ms", "whole seconds"),
        (2.5, "whole seconds"),
        ("1e400", "whole seconds"),
        ("soon", "duration"),
        ("0s", "from 1 to 60"),
        ("2m", "from 1 to 60"),
        (True, "duration"),
    ],
)
def test_a_bad_heartbeat_ttl_says_why(value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Configuration().replace(**{"provider.heartbeatTtl": value})
    assert info.value.key == "provider.heartbeatTtl"
    assert expected in str(info.value)


BAD_TOKENS = [
    "s3cret\n",  # a token file's last line, or a YAML | block
    "s3cret\r\n",
    " s3cret",
    "s3cret ",
    "s3c\x00ret",
    "s3c\tret",
    "s3c\u00e9ret",  # not ASCII
]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_a_token_that_cannot_be_a_header_is_refused_unseen(token: str) -> None:
    for build in (
        lambda: Configuration().replace(token=token),
        lambda: ServerConnectorConfig(token=token),
        lambda: load_config(environ={"POLARIS_TOKEN": token}),
        lambda: SDKContext.create(addresses=["127.0.0.1:8091"], token=token),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.key == "global.serverConnector.token"
        assert "s3c" not in str(info.value)
        assert "s3c" not in repr(info.value)


def test_a_token_from_a_yaml_block_keeps_its_newline_and_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text("global:\n  serverConnector:\n    token: |\n      s3cret\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "global.serverConnector.token"
    assert "s3cret" not in str(info.value)


def test_circuit_breaking_switch_from_a_file_and_the_environment() -> None:
    assert load_config(environ={}).consumer.circuit_breaker_enable is True
    document = {"consumer": {"circuitBreaker": {"enable": False}}}
    assert Configuration.from_mapping(document).consumer.circuit_breaker_enable is False
    off = load_config(environ={"POLARIS_CIRCUIT_BREAKER_ENABLE": "false"})
    assert off.consumer.circuit_breaker_enable is False
    with pytest.raises(ConfigError, match=r"consumer\.circuitBreaker\.enable"):
        load_config(environ={"POLARIS_CIRCUIT_BREAKER_ENABLE": "maybe"})
