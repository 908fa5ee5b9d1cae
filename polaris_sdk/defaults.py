"""The protocol's defaults, one home each: the SDK, its configuration and the
embedded server all take them from here (this module imports nothing, so the
configuration can use it without loading the wire definitions)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_TTL", "DEFAULT_WEIGHT", "LB_POLICIES", "MAX_TTL"]

DEFAULT_NAMESPACE: Final = "default"
"""The namespace of a request that names none (it always exists on a server)."""
DEFAULT_TTL: Final = 5
"""Heartbeat TTL in seconds when none is given; a server also uses it for a TTL out of range."""
MAX_TTL: Final = 60
"""The largest heartbeat TTL a server keeps, in seconds."""
DEFAULT_WEIGHT: Final = 100
"""An instance's weight when its registration gives none."""
LB_POLICIES: Final = ("weightedRandom", "ringHash", "roundRobin")
"""The load balancers by their Polaris names; the first is the default."""
