"""The consumer's local cache of service instances, in the client-go informer split.

:mod:`~polaris_sdk.cache.listwatch` (list = one Discover, watch = Discover
with the held revision) feeds :mod:`~polaris_sdk.cache.reflector` (the
list-then-watch loop: its decisions in the pure
:mod:`~polaris_sdk.cache.reflector_core`, driven on the context's
scheduler), which writes through :mod:`~polaris_sdk.cache.informer` (diffs
into events, one mailbox per listener, see :mod:`~polaris_sdk.dispatch`)
into :mod:`~polaris_sdk.cache.store` (immutable snapshots only; routing and
pickers live in :mod:`polaris_sdk.consumer`), backed up on disk by
:mod:`~polaris_sdk.cache.persist`. :class:`ServiceCache` ties them together
for one SDKContext.
"""

from polaris_sdk.cache.informer import diff, initial_event
from polaris_sdk.cache.listwatch import InstanceLister, ListerWatcher
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.cache.reflector import ConnectionState, Reflector
from polaris_sdk.cache.reflector_core import ReflectorCore
from polaris_sdk.cache.service_cache import ServiceCache, StateListener
from polaris_sdk.cache.store import Entry, ReplaceHook, Store

__all__ = [
    "CacheOptions",
    "ConnectionState",
    "DiskBackup",
    "Entry",
    "InstanceLister",
    "ListerWatcher",
    "Reflector",
    "ReflectorCore",
    "ReplaceHook",
    "ServiceCache",
    "StateListener",
    "Store",
    "diff",
    "initial_event",
]
