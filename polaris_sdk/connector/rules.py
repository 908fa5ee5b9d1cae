"""Discover of the circuit-breaker rules of a service, without I/O.

Contract: :func:`discover_circuit_breaker` builds the ``Discover
CIRCUIT_BREAKER`` call for a callee (with the last revision, so an unchanged
set answers 200001); :func:`circuit_breaker_result` reads a judged answer:
None when unchanged, else ``(revision, rule messages)``. An unknown service
(400202) reads as no rules. Sent through ``NamingConnector.call`` /
``AsyncNamingConnector.call`` like every other naming call.
"""

from __future__ import annotations

from typing import Any, Final

from polaris_sdk import wire
from polaris_sdk.connector.calls import DATA_NO_CHANGE, DISCOVER, SUCCESS, Call
from polaris_sdk.model import ServiceKey

__all__ = ["NOT_FOUND", "circuit_breaker_result", "discover_circuit_breaker"]

NOT_FOUND: Final = 400202
_CIRCUIT_BREAKER: Final = wire.DISCOVER_REQUEST_TYPE.values_by_name["CIRCUIT_BREAKER"].number


def discover_circuit_breaker(key: ServiceKey, revision: str = "") -> Call:
    request = wire.DiscoverRequest(
        type=_CIRCUIT_BREAKER,
        service=wire.Service(
            name=wire.StringValue(value=key.service),
            namespace=wire.StringValue(value=key.namespace),
            revision=wire.StringValue(value=revision),
        ),
    )
    return Call(
        DISCOVER,
        request,
        ok=(SUCCESS, DATA_NO_CHANGE, NOT_FOUND),
        what=f"Discover CIRCUIT_BREAKER {key}",
    )


def circuit_breaker_result(answer: Any) -> tuple[str, tuple[Any, ...]] | None:
    """None for 200001; else the revision and the ``v1.CircuitBreakerRule`` messages."""
    code = answer.code.value
    if code == DATA_NO_CHANGE:
        return None
    if code == NOT_FOUND or not answer.HasField("circuitBreaker"):
        return "", ()
    breaker = answer.circuitBreaker
    return breaker.revision.value, tuple(breaker.rules)
