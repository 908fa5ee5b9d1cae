from __future__ import annotations

import collections
import random

import pytest

from polaris_sdk.consumer.loadbalancer import (
    LB_POLICIES,
    RingHashPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
    build_picker,
    check_policy,
    hash_key_bytes,
)
from polaris_sdk.errors import ValidationError
from tests.consumer.helpers import make_instance

KEYS = [f"user-{n}".encode() for n in range(4000)]


def test_policies_are_the_polaris_names() -> None:
    assert set(LB_POLICIES) == {"weightedRandom", "ringHash", "roundRobin"}
    assert check_policy("ringHash") == "ringHash"
    with pytest.raises(ValidationError) as err:
        check_policy("leastConn")
    assert err.value.field == "lb_policy"


def test_pickers_refuse_an_empty_set() -> None:
    for policy in LB_POLICIES:
        with pytest.raises(ValueError):
            build_picker(policy, ())


def test_weighted_random_follows_weights() -> None:
    random.seed(7)
    instances = (make_instance(1, weight=100), make_instance(2, weight=300), make_instance(3))
    picker = WeightedRandomPicker(instances)
    draws = 50_000
    counts = collections.Counter(picker.pick().port for _ in range(draws))
    expected = {1: 0.2, 2: 0.6, 3: 0.2}
    for port, share in expected.items():
        # 50,000 draws: the standard deviation of a 0.2 share is ~0.0018.
        assert abs(counts[port] / draws - share) < 0.015, counts


def test_weighted_random_never_picks_weight_zero_unless_all_are_zero() -> None:
    random.seed(3)
    zero, one = make_instance(1, weight=0), make_instance(2, weight=1)
    picker = WeightedRandomPicker((zero, one, zero))
    assert {picker.pick().port for _ in range(2000)} == {2}
    all_zero = WeightedRandomPicker((make_instance(1, weight=0), make_instance(2, weight=0)))
    assert {all_zero.pick().port for _ in range(2000)} == {1, 2}


def test_round_robin_cycles_in_order() -> None:
    instances = tuple(make_instance(p) for p in (1, 2, 3))
    picker = RoundRobinPicker(instances)
    assert [picker.pick().port for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]


def test_ring_hash_is_stable_and_independent_of_listing_order() -> None:
    instances = tuple(make_instance(p) for p in range(1, 11))
    ring = RingHashPicker(instances)
    reordered = RingHashPicker(tuple(reversed(instances)))
    for key in KEYS[:500]:
        first = ring.pick(key)
        assert ring.pick(key) is first
        assert reordered.pick(key).id == first.id


def test_ring_hash_spreads_keys_evenly_enough() -> None:
    instances = tuple(make_instance(p) for p in range(1, 11))
    ring = RingHashPicker(instances)
    counts = collections.Counter(ring.pick(k).port for k in KEYS)
    assert set(counts) == {i.port for i in instances}
    # 40 points an instance: each share stays within a factor ~2 of the mean.
    assert max(counts.values()) < 2.2 * len(KEYS) / 10, counts
    assert min(counts.values()) > 0.4 * len(KEYS) / 10, counts


def test_ring_hash_moves_only_the_keys_of_a_leaving_instance() -> None:
    instances = tuple(make_instance(p) for p in range(1, 11))
    before = RingHashPicker(instances)
    leaving = instances[3]
    after = RingHashPicker(tuple(i for i in instances if i is not leaving))
    moved = 0
    for key in KEYS:
        old, new = before.pick(key), after.pick(key)
        if old.id == leaving.id:
            assert new.id != leaving.id
            moved += 1
        else:
            assert new.id == old.id, "a key of a staying instance moved"
    assert 0.03 < moved / len(KEYS) < 0.25


def test_ring_hash_adding_an_instance_takes_keys_only_for_itself() -> None:
    instances = tuple(make_instance(p) for p in range(1, 11))
    newcomer = make_instance(99)
    before, after = RingHashPicker(instances), RingHashPicker((*instances, newcomer))
    for key in KEYS:
        new = after.pick(key)
        assert new.id == newcomer.id or new.id == before.pick(key).id


def test_ring_hash_gives_heavier_instances_more_keys() -> None:
    light, heavy = make_instance(1, weight=100), make_instance(2, weight=400)
    ring = RingHashPicker((light, heavy))
    assert len(ring) == 40 + 160
    counts = collections.Counter(ring.pick(k).port for k in KEYS)
    assert counts[2] > 2 * counts[1], counts


def test_ring_hash_without_key_still_answers() -> None:
    ring = RingHashPicker((make_instance(1),))
    assert ring.pick(None).port == 1


def test_hash_key_bytes() -> None:
    assert hash_key_bytes("é") == "é".encode()
    assert hash_key_bytes(b"x") == b"x"
    assert hash_key_bytes(None) is None


@pytest.mark.parametrize("count", [1, 3, 50, 700])
def test_ring_hash_lookup_matches_a_plain_ring_walk(count: int) -> None:
    import bisect
    import hashlib
    import struct

    instances = tuple(make_instance(p, weight=50 + p % 200) for p in range(1, count + 1))
    ring = RingHashPicker(instances)
    # The same ring, built and walked the obvious way.
    points: list[tuple[int, str]] = []
    for inst in instances:
        digests = max(1, round(40 * inst.weight / 400))
        for n in range(digests):
            digest = hashlib.md5(f"{inst.id}-{n}".encode()).digest()
            points.extend((p, inst.id) for p in struct.unpack("<4I", digest))
    points.sort()
    positions = [p for p, _ in points]
    for key in [*KEYS[:1500], b"", b"\xff" * 8]:
        h = int.from_bytes(hashlib.md5(key).digest()[:4], "little")
        at = bisect.bisect_left(positions, h) % len(points)
        tied = bisect.bisect_right(positions, positions[at])
        candidates = {owner for _, owner in points[at:tied]}
        assert ring.pick(key).id in candidates


# The chi-square value with 5 degrees of freedom that a correct sampler
# exceeds with probability 0.001.
CHI2_5_DOF_P001 = 20.52


def test_weighted_random_matches_the_weights_by_chi_square() -> None:
    random.seed(20240611)
    weights = (1, 2, 3, 5, 8, 81, 0)
    instances = tuple(make_instance(port, weight=w) for port, w in enumerate(weights, 1))
    picker = WeightedRandomPicker(instances)
    draws = 100_000
    counts = collections.Counter(picker.pick().port for _ in range(draws))
    assert counts[7] == 0  # weight 0 never
    total = sum(weights)
    chi2 = sum(
        (counts[port] - draws * w / total) ** 2 / (draws * w / total)
        for port, w in enumerate(weights, 1)
        if w
    )
    assert chi2 < CHI2_5_DOF_P001, (chi2, counts)


def test_weighted_random_handles_columns_left_over_by_rounding() -> None:
    # Weights whose scaled shares do not add up exactly in binary.
    random.seed(11)
    instances = tuple(make_instance(p, weight=w) for p, w in enumerate((1, 1, 1, 0, 7, 3), 1))
    picker = WeightedRandomPicker(instances)
    counts = collections.Counter(picker.pick().port for _ in range(26_000))
    assert counts[4] == 0 and set(counts) == {1, 2, 3, 5, 6}
    assert abs(counts[5] / 26_000 - 7 / 13) < 0.02


def test_weighted_random_survives_a_random_number_that_rounds_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from polaris_sdk.consumer import loadbalancer

    instances = (make_instance(1, weight=0), make_instance(2, weight=5))
    picker = WeightedRandomPicker(instances)
    monkeypatch.setattr(loadbalancer, "_random", lambda: 1.0)
    assert picker.pick().port == 2
