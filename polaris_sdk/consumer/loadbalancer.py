"""Load balancers: pick one instance out of a router's candidates.

A balancer is built once per candidate tuple (so once per snapshot and
filter; :mod:`polaris_sdk.consumer.selection` memoises it) and then picks in O(1) or
O(log n) with the work done in C (``bisect``), so a pick costs about a
microsecond whatever the instance count. Building is pure and does no I/O.

Pickers are safe to share between threads: their state is read-only except
the round-robin counter, an :func:`itertools.count` whose ``next()`` is atomic
under the GIL.

Policies, by their Polaris names:

``weightedRandom`` (default)
    Probability proportional to ``weight``; an alias table (Walker) is built
    once, so a pick is O(1): one random number and two indexings. When every
    candidate has weight 0 (only possible after a fallback) the pick is
    uniform.
``ringHash``
    Consistent hashing on a ketama-style ring: each instance owns points
    derived from MD5 of its id, ``RING_POINTS_PER_WEIGHT_100`` points for
    weight 100 and proportionally more or fewer for other weights. A key maps
    to the first point at or after MD5(key). The same key gets the same
    instance while the set is unchanged; when an instance leaves, only the
    keys it owned move. Needs a ``hash_key``.
``roundRobin``
    Candidates in turn (not weighted). The turn is an :func:`itertools.count`
    the caller may supply: the consumer keeps one per service and filter
    across snapshots (:meth:`polaris_sdk.consumer.selection.Selector.counter`), so
    rebuilding a picker does not restart the turn at the first candidate.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from polaris_sdk.defaults import LB_POLICIES
from polaris_sdk.errors import ValidationError
from polaris_sdk.model import DEFAULT_WEIGHT, Instance
from polaris_sdk.validation import INVALID_PARAMETER

__all__ = [
    "DEFAULT_LB_POLICY",
    "LB_POLICIES",
    "Picker",
    "RING_HASH",
    "ROUND_ROBIN",
    "RingHashPicker",
    "RoundRobinPicker",
    "WEIGHTED_RANDOM",
    "WeightedRandomPicker",
    "build_picker",
    "check_policy",
    "hash_key_bytes",
]

WEIGHTED_RANDOM: Final = "weightedRandom"
RING_HASH: Final = "ringHash"
ROUND_ROBIN: Final = "roundRobin"
DEFAULT_LB_POLICY: Final = WEIGHTED_RANDOM

RING_POINTS_PER_WEIGHT_100: Final = 40
_POINTS_PER_DIGEST: Final = 4  # an MD5 digest is four 32-bit points, as in ketama
_MAX_DIGESTS_PER_INSTANCE: Final = 1000


class Picker(Protocol):
    """Picks one instance; ``hash_key`` matters only to hashing policies."""

    def pick(self, hash_key: bytes | None = None) -> Instance: ...


def hash_key_bytes(hash_key: str | bytes | None) -> bytes | None:
    return hash_key.encode("utf-8") if isinstance(hash_key, str) else hash_key


_random = random.random  # the module's generator: random.seed() still applies


class WeightedRandomPicker:
    """Walker's alias method (Vose's construction): column ``i`` of ``n`` holds
    instance ``i`` with probability ``_prob[i]`` and ``_alias[i]`` otherwise,
    so a pick is one random number, one multiply and two indexings."""

    __slots__ = ("_alias", "_count", "_instances", "_prob")

    def __init__(self, instances: tuple[Instance, ...]) -> None:
        if not instances:
            raise ValueError("no instances to pick from")
        self._instances = instances
        n = self._count = len(instances)
        total = sum(i.weight for i in instances)
        prob = [1.0] * n
        alias = list(range(n))
        heaviest = max(range(n), key=lambda k: instances[k].weight)
        if total > 0:
            scaled = [i.weight * n / total for i in instances]
            small = [k for k, w in enumerate(scaled) if w < 1.0]
            large = [k for k, w in enumerate(scaled) if w >= 1.0]
            while small and large:
                less, more = small.pop(), large[-1]
                prob[less] = scaled[less]
                alias[less] = more
                scaled[more] -= 1.0 - scaled[less]
                if scaled[more] < 1.0:
                    small.append(large.pop())
            for k in small:
                # Left over only through rounding: full unless it has no
                # weight at all, which must never be picked.
                if instances[k].weight <= 0:
                    prob[k], alias[k] = 0.0, heaviest
        # With no weight at all (only after a fallback) every column is full:
        # the pick is uniform. The extra column takes a product rounded up to n.
        self._prob = [*prob, 0.0]
        self._alias = [*alias, heaviest]

    def pick(self, hash_key: bytes | None = None) -> Instance:
        point = _random() * self._count
        column = int(point)
        if point - column < self._prob[column]:
            return self._instances[column]
        return self._instances[self._alias[column]]


class RoundRobinPicker:
    __slots__ = ("_counter", "_instances")

    def __init__(
        self, instances: tuple[Instance, ...], counter: Iterator[int] | None = None
    ) -> None:
        if not instances:
            raise ValueError("no instances to pick from")
        self._instances = instances
        self._counter = counter if counter is not None else itertools.count()

    def pick(self, hash_key: bytes | None = None) -> Instance:
        return self._instances[next(self._counter) % len(self._instances)]


def _key_point(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:4], "little")


class RingHashPicker:
    """A ketama-style ring. Each ring entry packs ``point << shift | owner`` into
    one unsigned 64-bit integer, so the ring is a single sorted ``array('Q')``
    (8 bytes a point). A bucket table indexed by the top bits of a point
    narrows each lookup to a handful of entries, so a pick costs the same on
    a ring of 400 points or 400,000."""

    __slots__ = ("_bucket_shift", "_buckets", "_fallback", "_mask", "_owners", "_ring", "_shift")

    def __init__(self, instances: tuple[Instance, ...]) -> None:
        if not instances:
            raise ValueError("no instances to pick from")
        # Ordered by id so ties between equal points resolve the same way
        # whatever order the server listed the instances in.
        owners = tuple(sorted(instances, key=lambda i: i.id))
        self._owners = owners
        self._shift = shift = max(1, (len(owners) - 1).bit_length())
        self._mask = (1 << shift) - 1
        self._fallback = WeightedRandomPicker(instances)
        entries: list[int] = []
        append = entries.append
        unpack = struct.Struct("<4I").unpack
        md5 = hashlib.md5
        for index, instance in enumerate(owners):
            weight = instance.weight or DEFAULT_WEIGHT
            per_digest = RING_POINTS_PER_WEIGHT_100 * weight / (_POINTS_PER_DIGEST * 100)
            digests = min(_MAX_DIGESTS_PER_INSTANCE, max(1, round(per_digest)))
            prefix = f"{instance.id}-"
            for n in range(digests):
                for point in unpack(md5(f"{prefix}{n}".encode(), usedforsecurity=False).digest()):
                    append(point << shift | index)
        entries.sort()
        self._ring = array("Q", entries)
        # About four ring entries a bucket, at most 2^16 buckets.
        bits = min(16, max(0, len(entries).bit_length() - 2))
        self._bucket_shift = 32 - bits
        entry_shift = self._bucket_shift + shift
        self._buckets = array(
            "I", (bisect_left(self._ring, b << entry_shift) for b in range((1 << bits) + 1))
        )

    def __len__(self) -> int:
        return len(self._ring)

    def pick(self, hash_key: bytes | None = None) -> Instance:
        if hash_key is None:
            return self._fallback.pick()
        point = _key_point(hash_key)
        bucket = point >> self._bucket_shift
        position = bisect_left(
            self._ring,
            point << self._shift,
            self._buckets[bucket],
            self._buckets[bucket + 1],
        )
        if position == len(self._ring):
            position = 0
        return self._owners[self._ring[position] & self._mask]


_BUILDERS: Final[dict[str, Callable[[tuple[Instance, ...]], Picker]]] = {
    WEIGHTED_RANDOM: WeightedRandomPicker,
    RING_HASH: RingHashPicker,
    ROUND_ROBIN: RoundRobinPicker,
}
if tuple(_BUILDERS) != LB_POLICIES:  # one list of names: polaris_sdk.defaults
    raise AssertionError(f"load balancers {tuple(_BUILDERS)} are not {LB_POLICIES}")


def check_policy(policy: str) -> str:
    """``policy`` if it names a balancer, else :class:`ValidationError`."""
    if not isinstance(policy, str) or policy not in _BUILDERS:
        raise ValidationError(
            "lb_policy", f"must be one of {', '.join(LB_POLICIES)}", INVALID_PARAMETER
        )
    return policy


def build_picker(policy: str, instances: tuple[Instance, ...]) -> Picker:
    """The picker of ``policy`` over ``instances`` (which must not be empty)."""
    return _BUILDERS[check_policy(policy)](instances)
