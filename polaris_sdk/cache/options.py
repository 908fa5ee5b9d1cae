"""Options of the consumer cache, with their defaults in one place.

:meth:`CacheOptions.from_config` takes the user-facing settings from
:class:`~polaris_sdk.config.ConsumerConfig`; the rest are tuning knobs with
defaults chosen here and documented on each field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from polaris_sdk.config import Configuration

__all__ = ["CacheOptions"]

logger = logging.getLogger("polaris_sdk.cache.options")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    refresh_interval: float = 2.0
    """Seconds between revision checks of each cached service."""
    refresh_jitter: float = 0.1
    """Each wait is the interval times a random factor from ``1 - jitter`` to
    1, so that the services of one process (and many processes) do not poll
    in lockstep while a change is still seen within one interval (the mean
    wait is ``1 - jitter / 2`` intervals). 0 turns it off; 1 spreads waits
    from 0 to the interval."""
    push_empty_protection: bool = True
    """Hold back an empty answer that follows a non-empty snapshot.

    On by default because an empty list from the registry is far more often a
    fault (a server restarted without its data, a store being migrated, a
    wrong namespace after a deploy) than the real disappearance of every
    instance, and the two failures are not alike: calling an instance that
    is gone fails one request, while an empty list fails them all. While an
    empty answer is held back the cache keeps serving the last instances,
    ``updated_at`` stops moving (so ``age`` grows) and a warning is logged;
    the first non-empty answer ends it. Turn it off when "no instance" must
    be seen at once (listeners then get the deletion events)."""
    persist_dir: str | None = None
    """Directory of the disk backup; None turns the backup off."""
    request_timeout: float | None = None
    """Deadline of each Discover call; None uses the connector's default
    (``global.api.timeout``)."""
    backoff_max: float = 30.0
    """Longest wait between attempts while Discover keeps failing. Attempts
    start one refresh interval apart and double (with jitter) up to this."""
    lost_after: float = 30.0
    """Seconds of continuous failure after which a service's state goes from
    SUSPENDED to LOST. The cache still serves the last snapshot when LOST."""
    listener_workers: int = 8
    """Most threads delivering events to listeners at once. A listener that
    blocks holds one; threads are started on demand and leave when idle."""
    listener_idle_timeout: float = 30.0
    """Seconds an idle listener thread waits for work before it exits."""

    def __post_init__(self) -> None:
        if self.refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive")
        if not 0 <= self.refresh_jitter <= 1:
            raise ValueError("refresh_jitter must be from 0 to 1")
        if self.backoff_max <= 0 or self.lost_after < 0:
            raise ValueError("backoff_max must be positive and lost_after not negative")
        if self.listener_workers < 1:
            raise ValueError("listener_workers must be at least 1")

    @classmethod
    def from_config(cls, config: Configuration) -> CacheOptions:
        consumer = config.consumer
        persist_dir = consumer.persist_dir
        if persist_dir is None and consumer.persist_enable:
            # Never pick a directory (such as the home directory) on the
            # user's behalf.
            logger.warning("persistEnable is set but persistDir is not; the disk backup is off")
        return cls(
            refresh_interval=consumer.service_refresh_interval,
            refresh_jitter=consumer.refresh_jitter,
            push_empty_protection=consumer.push_empty_protection,
            persist_dir=persist_dir,
        )
