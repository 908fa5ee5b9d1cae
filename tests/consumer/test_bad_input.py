"""ConsumerAPI refuses a request field of the wrong type with a ValidationError naming it,
before anything is sent, on both transports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from polaris_sdk import ConsumerAPI, ProviderAPI, ValidationError

CALLS = ("get_all_instances", "get_instances", "get_one_instance", "watch_service")

BAD_NAMES = [
    ("service", {"service": 5}),
    ("service", {"service": ["echo"]}),
    ("service", {"service": "\udc80"}),
    ("namespace", {"namespace": 5}),
    ("namespace", {"namespace": ["default"]}),
]

BAD_FILTERS = [
    ("metadata", {"metadata": "ab"}),
    ("metadata", {"metadata": ["a", "b"]}),
    ("metadata", {"metadata": [("k", "v")]}),
    ("metadata", {"metadata": {"k": ["v"]}}),
    ("metadata", {"metadata": {1: "v", "k": "v"}}),
    ("metadata", {"metadata": {"k": "\udc80"}}),
]


def call(consumer: ConsumerAPI, name: str) -> Callable[..., Any]:
    method = getattr(consumer, name)
    if name == "watch_service":
        return lambda **fields: method(listeners=[lambda event: None], **fields)
    return method  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize(("field", "change"), BAD_NAMES)
def test_a_bad_name_is_named(
    consumer: ConsumerAPI, name: str, field: str, change: dict[str, Any]
) -> None:
    fields = {"service": "echo", **change}
    with pytest.raises(ValidationError) as info:
        call(consumer, name)(**fields)
    assert info.value.field == field


@pytest.mark.parametrize("name", ("get_instances", "get_one_instance"))
@pytest.mark.parametrize(("field", "change"), BAD_FILTERS)
def test_a_bad_metadata_filter_is_named_even_for_a_cached_service(
    consumer: ConsumerAPI,
    provider: ProviderAPI,
    name: str,
    field: str,
    change: dict[str, Any],
) -> None:
    provider.register(service="echo", host="127.0.0.1", port=1)
    assert len(consumer.get_all_instances(service="echo")) == 1
    with pytest.raises(ValidationError) as info:
        call(consumer, name)(service="echo", **change)
    assert info.value.field == field


@pytest.mark.parametrize("policy", [5, ["ringHash"], {"ringHash": 1}])
def test_a_bad_lb_policy_is_named(consumer: ConsumerAPI, policy: object) -> None:
    with pytest.raises(ValidationError) as info:
        consumer.get_one_instance(service="echo", lb_policy=policy)
    assert info.value.field == "lb_policy"


@pytest.mark.parametrize("listeners", [None, 5, "fn", [None], [5]])
def test_bad_listeners_are_named(consumer: ConsumerAPI, listeners: object) -> None:
    for method in (consumer.watch_service, consumer.unwatch_service):
        with pytest.raises(ValidationError) as info:
            method(service="echo", listeners=listeners)
        assert info.value.field == "listeners"
