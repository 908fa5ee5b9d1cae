"""Selection under many distinct filters and across snapshot changes, over real sockets.

The selector keeps a bounded number of candidate sets and pickers (two
generations of ``LIMIT`` each, here); these tests use more filters than that
bound so that values are evicted and rebuilt while calls go on, and check
that every answer stays right and round robin keeps taking turns.
"""

from __future__ import annotations

import collections
import itertools
import uuid
from collections.abc import Callable

import pytest
from pytest_mock import MockerFixture

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext, ValidationError
from polaris_sdk.consumer import api as consumer_api
from polaris_sdk.consumer import selection
from polaris_sdk.validation import MAX_METADATA_ENTRIES, MAX_METADATA_VALUE
from tests.consumer.conftest import REFRESH
from tests.support import wait_until

HOST = "127.0.0.1"
KEYS = [f"k{n}" for n in range(9)]
# Every non-empty subset of nine keys: 511 distinct filters, each matching
# every instance registered with all nine keys.
SUBSET_FILTERS = [
    {key: "v" for key in subset}
    for size in range(1, len(KEYS) + 1)
    for subset in itertools.combinations(KEYS, size)
]


LIMIT = 64
"""Values per generation in these tests' selectors, so eviction is frequent."""


@pytest.fixture(autouse=True)
def small_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_ROUTES", "MAX_CHOICES", "MAX_RINGS"):
        monkeypatch.setattr(selection, name, LIMIT)


def ports(instances: object) -> list[int]:
    return sorted(i.port for i in instances)  # type: ignore[attr-defined]


def test_round_robin_takes_turns_past_the_memo_limit(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    for port in (1, 2, 3):
        provider.register(service="echo", host=HOST, port=port, metadata=dict.fromkeys(KEYS, "v"))
    assert len(SUBSET_FILTERS) > 2 * LIMIT
    picks: dict[int, list[int]] = collections.defaultdict(list)
    # Interleaved: between two calls with one filter come 510 calls with the
    # others, so each filter's picker has left the memo by its next call.
    for _ in range(3):
        for n, wanted in enumerate(SUBSET_FILTERS):
            one = consumer.get_one_instance(service="echo", lb_policy="roundRobin", metadata=wanted)
            picks[n].append(one.port)
    for n, got in picks.items():
        assert sorted(got) == [1, 2, 3], (SUBSET_FILTERS[n], got)


def test_selection_with_many_filters_stays_correct(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    # Instance p carries k_i for every bit i set in p: a filter over a set of
    # keys matches exactly the ports whose bits include it.
    for port in range(1, 16):
        metadata = {KEYS[bit]: "v" for bit in range(4) if port >> bit & 1}
        provider.register(service="echo", host=HOST, port=port, metadata=metadata)
    filters = [
        {**{KEYS[bit]: "v" for bit in range(4) if mask >> bit & 1}, "extra": str(n)}
        for n in range(40)
        for mask in range(1, 16)
    ]
    assert len(filters) > 2 * LIMIT

    def expected(wanted: dict[str, str]) -> list[int]:
        mask = sum(1 << bit for bit in range(4) if KEYS[bit] in wanted)
        return [p for p in range(1, 16) if p & mask == mask]

    ring: dict[int, int] = {}
    for _ in range(2):
        for n, wanted in enumerate(filters):
            # "extra" matches nothing: every one of these falls back to all.
            got = consumer.get_instances(service="echo", metadata=wanted)
            assert got.fallback and ports(got) == list(range(1, 16))
            exact = {k: v for k, v in wanted.items() if k != "extra"}
            matching = expected(exact)
            got = consumer.get_instances(service="echo", metadata=exact)
            assert not got.fallback and ports(got) == matching
            for policy in ("weightedRandom", "roundRobin"):
                one = consumer.get_one_instance(service="echo", lb_policy=policy, metadata=exact)
                assert one.port in matching
            one = consumer.get_one_instance(
                service="echo", lb_policy="ringHash", hash_key=f"user-{n}", metadata=exact
            )
            assert one.port in matching
            # The same key and filter land on the same instance every time.
            assert ring.setdefault(n, one.port) == one.port


def test_routing_runs_once_per_snapshot_and_filter(
    make_context: Callable[..., SDKContext], provider: ProviderAPI, mocker: MockerFixture
) -> None:
    for port in (1, 2):
        provider.register(service="echo", host=HOST, port=port, metadata={"env": "prod"})
    consumer = ConsumerAPI(make_context(refresh_interval=60))
    consumer.get_all_instances(service="echo")
    route = mocker.spy(selection, "route")
    for _ in range(3):
        for policy in ("weightedRandom", "roundRobin"):
            consumer.get_one_instance(service="echo", lb_policy=policy, metadata={"env": "prod"})
        consumer.get_one_instance(
            service="echo", lb_policy="ringHash", hash_key="k", metadata={"env": "prod"}
        )
        assert ports(consumer.get_instances(service="echo", metadata={"env": "prod"})) == [1, 2]
    assert route.call_count == 1


def test_a_filter_is_validated_once_while_in_use(
    consumer: ConsumerAPI, provider: ProviderAPI, mocker: MockerFixture
) -> None:
    provider.register(service="echo", host=HOST, port=1)
    check = mocker.spy(consumer_api, "check_metadata")
    # New to this process's cache of checked filters; two keys, given in both orders.
    wanted = {"validated-once": str(uuid.uuid4()), "zone": "a"}
    for _ in range(5):
        consumer.get_instances(service="echo", metadata=wanted)
        consumer.get_one_instance(service="echo", metadata=dict(reversed(wanted.items())))
    assert check.call_count == 1


def test_filtered_answers_follow_confirmations(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    provider.register(service="echo", host=HOST, port=1, metadata={"env": "prod"})
    first = consumer.get_instances(service="echo", metadata={"env": "prod"})
    unfiltered = consumer.get_instances(service="echo")
    # The server re-confirms the unchanged revision every refresh interval.
    wait_until(
        lambda: consumer.get_all_instances(service="echo").updated_at > first.updated_at,
        REFRESH * 10,
    )
    everything = consumer.get_all_instances(service="echo")
    later = consumer.get_instances(service="echo", metadata={"env": "prod"})
    assert later.revision == first.revision and later.instances == first.instances
    assert later.updated_at >= everything.updated_at > first.updated_at
    assert consumer.get_instances(service="echo").updated_at > unfiltered.updated_at


def test_an_unfiltered_call_with_every_instance_healthy_answers_the_snapshot_itself(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    for port in (1, 2):
        provider.register(service="echo", host=HOST, port=port)
    everything = consumer.get_all_instances(service="echo")
    healthy = consumer.get_instances(service="echo")
    assert healthy is everything and not healthy.fallback


@pytest.mark.parametrize(
    "metadata",
    [
        {"k": 1},
        {1: "v", "k": "v"},
        {"k": ["v"]},
        {"k": "v" * (MAX_METADATA_VALUE + 1)},
        {f"k{n}": "v" for n in range(MAX_METADATA_ENTRIES + 1)},
    ],
    ids=["int value", "mixed key types", "unhashable value", "long value", "too many"],
)
def test_an_invalid_filter_is_refused_every_time(
    consumer: ConsumerAPI, provider: ProviderAPI, metadata: dict[object, object]
) -> None:
    provider.register(service="echo", host=HOST, port=1)
    consumer.get_instances(service="echo", metadata={"k": "v"})
    for _ in range(2):
        with pytest.raises(ValidationError) as err:
            consumer.get_instances(service="echo", metadata=metadata)
        assert err.value.field == "metadata"
        with pytest.raises(ValidationError) as err:
            consumer.get_one_instance(service="echo", metadata=metadata)
        assert err.value.field == "metadata"
