"""The context-manager protocols shared by everything with a ``close()`` / ``aclose()``.

``with X(...) as x:`` gives ``x`` itself and calls ``close()`` on the way out,
whether the block raised or not; an exception is never swallowed.
``async with`` does the same with ``aclose()`` for the asyncio twins, after
the object's entry check (:meth:`AsyncClosing._entering`: its event loop).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["AsyncClosing", "Closing"]


class Closing:
    """Mixin: ``__enter__`` returns the object, ``__exit__`` calls ``close()``."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """Mixin: ``__aenter__`` checks then returns the object, ``__aexit__`` awaits ``aclose()``."""

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    def _entering(self) -> None:
        """Checked on ``async with`` entry (the asyncio facades: the context's loop)."""

    async def __aenter__(self) -> Self:
        self._entering()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
