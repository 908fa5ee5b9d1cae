"""When to try a call again, and how long to wait first.

Contract:

* :func:`is_retriable` is the one rule: network failures, missed deadlines
  and retriable server codes (5xxxxx, and the transient 4xxxxx codes the
  errors table marks) are tried again; every other answer is final.
* :class:`RetryPolicy` is data plus pure decisions: how many attempts, the
  backoff (exponential with jitter, capped), and :meth:`RetryPolicy.
  tenacity_args`, the stop / wait / retry settings both drivers hand to
  tenacity (``Retrying`` when blocking, ``AsyncRetrying`` on asyncio).
  Nothing here sleeps, sends or reads a clock other than through tenacity.
* A deadline is never slept past: the wait before an attempt that could not
  start before the call's deadline is not taken, and the last error is
  raised instead.
* Tenacity is set up only after a first attempt failed with a retriable
  error (see :mod:`polaris_sdk.connector.naming`), so the common case, one
  successful attempt, pays nothing for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from polaris_sdk.errors import NetworkError, ServerError

__all__ = ["RetryPolicy", "is_retriable"]

logger = logging.getLogger("polaris_sdk.connector.retry")


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

    def tenacity_args(self, timeout: float, what: str) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` over one call.

        ``timeout`` is the call's whole budget, counted by tenacity from its
        first attempt (the driver's deadline check inside each attempt is
        the authority; this only keeps tenacity from sleeping past it).
        """

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            logger.info(
                "%s failed (attempt %d: %s); retrying in %.2fs",
                what,
                state.attempt_number,
                exc,
                wait,
            )

        return {
            "stop": stop_after_attempt(self.max_retries + 1) | stop_before_delay(timeout),
            "wait": wait_exponential(multiplier=self.initial, max=self.maximum)
            + wait_random(0, self.initial),
            "retry": retry_if_exception(is_retriable),
            "before_sleep": log_retry,
            "reraise": True,
        }
