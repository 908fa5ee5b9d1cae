from __future__ import annotations

import hashlib
from typing import Any

import pytest

from polaris_sdk import validation
from polaris_sdk.errors import ValidationError

GOOD: dict[str, Any] = {
    "namespace": "default",
    "service": "echo",
    "host": "10.0.0.5",
    "port": 8080,
}


def check(**overrides: Any) -> None:
    validation.check_instance(**{**GOOD, **overrides})


def test_a_good_instance_passes() -> None:
    check(protocol="grpc", version="1.0", weight=0, metadata={"env": "prod"})
    check(service="a-b.c/d:e_f", port=0)
    check(port=65535, weight=65535)


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"service": ""}, "service", 400120),
        ({"service": None}, "service", 400120),
        ({"service": "has space"}, "service", 400120),
        ({"service": "x" * 129}, "service", 400120),
        ({"namespace": ""}, "namespace", 400110),
        ({"namespace": "ns!"}, "namespace", 400110),
        ({"namespace": "n" * 65}, "namespace", 400110),
        ({"host": ""}, "host", 400131),
        ({"host": "h" * 129}, "host", 400131),
        ({"port": None}, "port", 400132),
        ({"port": -1}, "port", 400132),
        ({"port": 65536}, "port", 400132),
        ({"port": "80"}, "port", 400132),
        ({"port": True}, "port", 400132),
        ({"protocol": "p" * 33}, "protocol", 400136),
        ({"version": "v" * 33}, "version", 400137),
        ({"logic_set": "l" * 129}, "logic_set", 400138),
        ({"weight": -1}, "weight", 400103),
        ({"weight": 65536}, "weight", 400103),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata", 400150),
        ({"metadata": {"k" * 129: "v"}}, "metadata", 400150),
        ({"metadata": {"k": "v" * 4097}}, "metadata", 400150),
        ({"metadata": {"k": 1}}, "metadata", 400150),
    ],
)
def test_each_rule_names_the_field_and_code(
    overrides: dict[str, Any], field: str, code: int
) -> None:
    with pytest.raises(ValidationError) as info:
        check(**overrides)
    assert info.value.field == field
    assert info.value.code == code
    assert str(info.value).startswith(f"{field}: ")


def test_an_empty_metadata_key_is_allowed_as_on_a_real_server() -> None:
    check(metadata={"": "v"})


def test_limits_are_inclusive() -> None:
    check(service="s" * 128, namespace="n" * 64, host="h" * 128)
    check(metadata={f"k{i}": "v" * 4096 for i in range(64)})


def test_instance_id_is_the_servers_sha1() -> None:
    expected = hashlib.sha1(b"default##echo##10.0.0.5##8080").hexdigest()
    assert validation.instance_id("default", "echo", "10.0.0.5", 8080) == expected


def test_instance_id_with_vpc() -> None:
    expected = hashlib.sha1(b"default##echo##vpc-1##10.0.0.5##8080").hexdigest()
    assert validation.instance_id("default", "echo", "10.0.0.5", 8080, "vpc-1") == expected


def test_a_supplied_id_must_not_be_empty() -> None:
    validation.check_instance_id(None)
    validation.check_instance_id("abc")
    with pytest.raises(ValidationError) as info:
        validation.check_instance_id("")
    assert info.value.code == 400130


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        # As service/instance_test.go::TestCheckInstanceFieldLen: lengths before presence.
        ({"port": None, "protocol": "p" * 33}, "protocol", 400136),
        ({"port": None, "version": "v" * 33}, "version", 400137),
        ({"port": None, "logic_set": "l" * 129}, "logic_set", 400138),
        ({"port": None, "metadata": {"k": "v" * 4097}}, "metadata", 400150),
        ({"port": None, "weight": 65536}, "weight", 400103),
        ({"service": "", "protocol": "p" * 33}, "protocol", 400136),
        ({"host": None, "version": "v" * 33}, "version", 400137),
        ({"service": "bad name", "port": 65536}, "port", 400132),
        # The metadata count first of all.
        ({"service": "s" * 129, "metadata": {f"k{i}": "v" for i in range(65)}}, "metadata", 400150),
        # Lengths in the server's order.
        ({"host": "h" * 129, "protocol": "p" * 33}, "host", 400131),
        ({"protocol": "p" * 33, "version": "v" * 33}, "protocol", 400136),
        ({"logic_set": "l" * 129, "metadata": {"k": "v" * 4097}}, "logic_set", 400138),
        ({"weight": 65536, "service": ""}, "weight", 400103),
    ],
)
def test_rules_apply_in_the_real_servers_order(
    overrides: dict[str, Any], field: str, code: int
) -> None:
    with pytest.raises(ValidationError) as info:
        check(**overrides)
    assert (info.value.field, info.value.code) == (field, code)


@pytest.mark.parametrize(
    ("field", "limit", "code"),
    [
        ("instance_id", 128, 400130),
        ("vpc_id", 64, 400103),
        ("region", 128, 400103),
        ("zone", 128, 400103),
        ("campus", 128, 400103),
    ],
)
def test_fields_the_server_stores_unchecked_have_its_column_sizes(
    field: str, limit: int, code: int
) -> None:
    check(**{field: "x" * limit})
    with pytest.raises(ValidationError) as info:
        check(**{field: "x" * (limit + 1)})
    assert (info.value.field, info.value.code) == (field, code)


@pytest.mark.parametrize("priority", [-1, 128, 2**40, True, "1", 1.0])
def test_priority_is_a_tinyint(priority: object) -> None:
    check(priority=0)
    check(priority=127)
    with pytest.raises(ValidationError) as info:
        check(priority=priority)
    assert info.value.field == "priority"


@pytest.mark.parametrize(
    "field",
    ["namespace", "service", "host", "protocol", "version", "logic_set", "region", "vpc_id"],
)
@pytest.mark.parametrize("bad", [123, b"bytes", ["x"], "\udc80"])
def test_text_fields_refuse_other_types_and_lone_surrogates(field: str, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        check(**{field: bad})
    assert info.value.field == field
