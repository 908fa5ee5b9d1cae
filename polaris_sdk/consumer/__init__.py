"""The consumer side: :class:`ConsumerAPI`, routers and load balancers.

The cache the facade reads lives in :mod:`polaris_sdk.cache`.
"""

from polaris_sdk.cache import ConnectionState
from polaris_sdk.consumer.api import ConsumerAPI
from polaris_sdk.consumer.loadbalancer import LB_POLICIES

__all__ = ["LB_POLICIES", "ConnectionState", "ConsumerAPI"]
