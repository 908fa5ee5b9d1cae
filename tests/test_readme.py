"""The README's code runs and its configuration table lists every key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from polaris_sdk.config import KEYS, load_config
from polaris_sdk.server import PolarisServer

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_usage_example_runs_against_a_server(no_thread_leak: None) -> None:
    usage = blocks("python")[0]
    with PolarisServer(grpc_port=0) as server:
        code = usage.replace("127.0.0.1:8091", server.grpc_address)
        assert code != usage
        namespace: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        assert namespace["instance"].port == 8080  # type: ignore[attr-defined]


def test_every_configuration_key_is_documented() -> None:
    for key, spec in KEYS.items():
        assert f"| `{key}` |" in README, key
        if spec.env:
            assert f"`{spec.env}`" in README, spec.env


def test_the_yaml_example_is_a_valid_configuration(tmp_path: Path) -> None:
    (example,) = blocks("yaml")
    path = tmp_path / "polaris.yaml"
    path.write_text(example, encoding="utf-8")
    config = load_config(path, environ={})
    assert config.server_connector.addresses == ("10.0.0.1:8091", "10.0.0.2:8091")
    assert config.server_connector.connect_timeout == 0.5
    assert yaml.safe_load(example)["consumer"]["localCache"]["serviceRefreshInterval"] == "2s"
