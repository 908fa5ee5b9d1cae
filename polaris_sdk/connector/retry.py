"""Retrying a call until it succeeds, fails for good, or runs out of time.

Contract: :func:`call_with_retry` runs ``attempt(remaining_seconds)`` and
retries only failures that :func:`is_retriable` accepts (network failures,
missed deadlines and 5xxxxx server codes; never a 4xxxxx answer), waiting an
exponential backoff with jitter between attempts. It never sleeps past the
deadline: when the next wait would cross it, the last error is raised. Pure
control flow over tenacity; the caller owns all I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from polaris_sdk.errors import NetworkError, PolarisTimeoutError, ServerError

__all__ = ["RetryPolicy", "call_with_retry", "is_retriable"]

logger = logging.getLogger("polaris_sdk.connector.retry")

T = TypeVar("T")


def is_retriable(exc: BaseException) -> bool:
    """True for failures another attempt may cure."""
    if isinstance(exc, NetworkError):
        return True
    return isinstance(exc, ServerError) and exc.retriable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` after the first attempt; backoff from ``initial`` doubling to ``maximum``."""

    max_retries: int = 3
    initial: float = 0.2
    maximum: float = 2.0


def call_with_retry(
    attempt: Callable[[float], T],
    *,
    timeout: float,
    policy: RetryPolicy,
    what: str,
) -> T:
    """``attempt(remaining)`` until success, a final failure or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout

    def run_once() -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PolarisTimeoutError(f"{what}: no answer within {timeout:.3g}s")
        return attempt(remaining)

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.info(
            "%s failed (attempt %d: %s); retrying in %.2fs", what, state.attempt_number, exc, wait
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_retries + 1) | stop_before_delay(timeout),
        wait=wait_exponential(multiplier=policy.initial, max=policy.maximum)
        + wait_random(0, policy.initial),
        retry=retry_if_exception(is_retriable),
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(run_once)
