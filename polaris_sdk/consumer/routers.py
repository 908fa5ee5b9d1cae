"""Routers: which instances of a snapshot a call may go to.

Pure functions over tuples of :class:`~polaris_sdk.model.Instance`, no I/O, no
state; safe from any thread. The consumer memoises their results per snapshot
(see :mod:`polaris_sdk.consumer.selection`), so they run once per snapshot and
filter, not once per call.

The chain, as the Polaris SDKs apply it:

1. healthy: ``healthy`` and not ``isolated`` and ``weight > 0``;
2. metadata: every requested key present with exactly the requested value;
3. fallback: when 1 and 2 leave nothing, every instance of the service is a
   candidate again and the result says so (``fallback=True``). An empty
   service stays empty; there is nothing to fall back to.
"""

from __future__ import annotations

from collections.abc import Mapping

from polaris_sdk.model import Instance

__all__ = ["MetadataKey", "healthy", "matches_metadata", "metadata_key", "route"]

MetadataKey = tuple[tuple[str, str], ...]
"""A metadata filter in a hashable, order-independent form (sorted items)."""


def metadata_key(metadata: Mapping[str, str] | None) -> MetadataKey:
    """``metadata`` as a sorted tuple of items: equal filters give equal keys."""
    return tuple(sorted(metadata.items())) if metadata else ()


def healthy(instance: Instance) -> bool:
    """True when ``instance`` may take traffic: healthy, not isolated, weight above 0."""
    return instance.healthy and not instance.isolated and instance.weight > 0


def matches_metadata(instance: Instance, wanted: MetadataKey) -> bool:
    """True when ``instance`` carries every (key, value) pair of ``wanted``."""
    meta = instance.metadata
    return all(meta.get(key) == value for key, value in wanted)


def route(
    instances: tuple[Instance, ...], wanted: MetadataKey = ()
) -> tuple[tuple[Instance, ...], bool]:
    """The candidates for a call and whether they are the fallback to all instances.

    When every instance qualifies, the candidates are ``instances`` itself (the
    same tuple), so callers can tell that nothing was filtered out."""
    candidates = tuple(
        i for i in instances if healthy(i) and (not wanted or matches_metadata(i, wanted))
    )
    if len(candidates) == len(instances):
        return instances, False
    if candidates:
        return candidates, False
    return instances, True
